"""A tiny ONNX model with LPRNet's input and output contract, and a copy slowed by two convolutions, for tests that
time or profile an artifact in seconds."""

from __future__ import annotations

import numpy as np
import pytest

# The slowed copy's convolutions: 3 -> 64 channels 3x3 on 24x94 (output 22x92), then 64 -> 64 3x3 (output 20x90).
SLOW_CONV_MACS = (64 * 3 * 3 * 3 * 22 * 92, 64 * 64 * 3 * 3 * 20 * 90)


def tiny_onnx(path, slowed: bool) -> None:
    """An ONNX model with LPRNet's input and output contract: images (N,3,24,94) -> (N,3,18), the mean over the
    height of the first 18 columns. `slowed` adds two convolutions (about 70 M MACs) whose result, times zero, is
    added to the output: the same logits, much more work."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ReduceMean", ["images", "axes_h"], ["mean"], keepdims=0),
             helper.make_node("Slice", ["mean", "start", "end", "axes_w"], ["logits" if not slowed else "plain"])]
    inits = [numpy_helper.from_array(np.array(value, np.int64), name)
             for name, value in (("axes_h", [2]), ("start", [0]), ("end", [18]), ("axes_w", [2]))]
    if slowed:
        inits += [numpy_helper.from_array(rng.standard_normal((64, 3, 3, 3)).astype(np.float32), "w1"),
                  numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), "w2"),
                  numpy_helper.from_array(np.zeros((), np.float32), "zero")]
        nodes += [helper.make_node("Conv", ["images", "w1"], ["c1"]), helper.make_node("Conv", ["c1", "w2"], ["c2"]),
                  helper.make_node("ReduceMean", ["c2"], ["total"], keepdims=0),
                  helper.make_node("Mul", ["total", "zero"], ["nothing"]),
                  helper.make_node("Add", ["plain", "nothing"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            ["N", 3, 24, 94])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 18])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    helper.set_model_props(model, {"alphabet": "latin"})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
