"""ONNX export of an LPRNet with a dynamic batch axis and the alphabet in the model's metadata.

Uses PyTorch's torch.export-based exporter (opset 18, the lowest it implements), which turns the channel-selecting
max pools into a Slice (or Gather) and a MaxPool. That exporter annotates every node, value and graph with where it
came from (`pkg.torch.onnx.stack_trace` with absolute file paths and line numbers, Python qualnames of the module
hierarchy, FX node names, the exported program's signature); `export_onnx` removes all of it, so that the file holds
only the graph, its weights and the model-level `alphabet`, and its bytes do not change when the code moves or the
checkout lives in another folder. Nothing reads that provenance: ONNX Runtime and the TVM frontend ignore it, and
the int8 QDQ plan (onnx_int8.py) pairs nodes by graph structure, not by name scope.
Does not quantize (see onnx_int8.py) and does not check numerics (the export-onnx stage and the tests do).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import onnx
import torch

from lprnet.io import atomic_path
from lprnet.model.alphabet import Alphabet
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH

OPSET = 18


def export_onnx(model: torch.nn.Module, alphabet: Alphabet, path: str | os.PathLike, opset: int = OPSET) -> None:
    model = model.eval()
    example = torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH)
    program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                dynamo=True, verbose=False)
    proto = program.model_proto
    strip_exporter_metadata(proto)
    with atomic_path(path) as tmp:
        onnx.helper.set_model_props(proto, {"alphabet": alphabet.name})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))


def strip_exporter_metadata(model: onnx.ModelProto) -> None:
    """Clear, in place, the metadata_props of every graph (subgraphs of control-flow nodes included), function,
    node, value and initializer. The model's own metadata_props (where `export_onnx` puts the alphabet) stay."""
    for graph in _graphs(model):
        del graph.metadata_props[:]
        for item in (*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
            del item.metadata_props[:]
    for function in model.functions:
        del function.metadata_props[:]
        for item in (*function.node, *function.value_info):
            del item.metadata_props[:]


def _graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every graph a node attribute holds (If / Loop / Scan bodies), in the main graph or in a
    function, recursively."""
    pending = [model.graph, *(graph for function in model.functions for node in function.node
                              for graph in _subgraphs(node))]
    while pending:
        graph = pending.pop()
        yield graph
        pending.extend(subgraph for node in graph.node for subgraph in _subgraphs(node))


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        yield from attribute.graphs
