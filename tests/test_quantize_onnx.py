"""ONNX Runtime int8 QDQ against its fp32 source: ranges from a cache, QDQ graph, predictions that agree."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from lprnet.backends import load_predictor
from lprnet.data import to_network_input
from lprnet.export import export_onnx
from lprnet.quantize_onnx import calibrate_onnx, context_nodes, quantize_qdq


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    import torch

    from lprnet.alphabet import get_alphabet
    from lprnet.model import LPRNet, LPRNetConfig

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_onnx(LPRNet(LPRNetConfig(num_classes=35)).eval(), get_alphabet("latin"), path)
    return path


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_qdq_model_follows_its_fp32_source(tmp_path, fp32_onnx, images_and_labels, method):
    images, _ = images_and_labels
    cache = tmp_path / "ranges.json"
    calibrate_onnx(fp32_onnx, images[:16], method, cache)
    quantize_qdq(fp32_onnx, cache, method, tmp_path / "int8.onnx")
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "QLinearConv" not in ops
    # The container conv reads fp32 context: no DequantizeLinear feeds it.
    container = [n for n in proto.graph.node if n.name in context_nodes(onnx.load(str(fp32_onnx)))]
    assert len(container) == 1
    fp32, int8 = load_predictor(fp32_onnx), load_predictor(tmp_path / "int8.onnx")
    assert int8.alphabet == fp32.alphabet
    x = to_network_input(images)
    reference, quantized = fp32(x), int8(x)
    assert np.abs(reference - quantized).max() < 0.2 * np.abs(reference).max()
    assert (reference.argmax(1) == quantized.argmax(1)).mean() > 0.9
    assert (tmp_path / "int8.onnx").stat().st_size < 0.5 * fp32_onnx.stat().st_size


def test_unknown_method_is_refused(tmp_path, fp32_onnx, images_and_labels):
    with pytest.raises(ValueError, match="unknown calibration method 'magic'.*minmax"):
        calibrate_onnx(fp32_onnx, images_and_labels[0], "magic", tmp_path / "r.json")
