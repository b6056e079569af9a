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

import numpy as np
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


def fold_channel_selections(model: onnx.ModelProto) -> int:
    """Fold each channel selection that feeds a MaxPool and then a 1x1 convolution into that convolution, in place;
    returns how many were folded.

    The pools that keep a subset of channels (ChannelSelectMaxPool) export as a Slice or Gather on the channel axis,
    a MaxPool, and the next block's first convolution. ONNX Runtime's NCHWc kernels have no channel slice, so it
    converts the tensor back to NCHW around it and runs the pool and that convolution in NCHW. Max pooling is per
    channel: pooling every channel and giving the convolution zero weights for the dropped ones computes the same
    sums (in another order), and the pool and the convolution stay in NCHWc. Only 1x1 convolutions are widened: for
    a KxL one every dropped channel costs KxL times as many multiply-adds. A selection or pool whose output is also a
    graph output, or is read by another node, stays. Apply it to the fp32 graphs ONNX Runtime runs, after any int8
    plan (onnx_int8.py pairs convolutions by weight shape)."""
    constants = {init.name: init for init in model.graph.initializer}
    constants.update({node.output[0]: node.attribute[0].t for node in model.graph.node
                      if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"})
    shapes = {value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
              for value in onnx.shape_inference.infer_shapes(model).graph.value_info}
    graph_outputs = {value.name for value in model.graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(tensor: str, op_type: str) -> onnx.NodeProto | None:
        found = consumers.get(tensor, [])
        if tensor in graph_outputs or len(found) != 1 or found[0].op_type != op_type:
            return None
        return found[0]

    folded = []
    for node in model.graph.node:
        kept = _selected_channels(node, constants, shapes)
        pool = only_consumer(node.output[0], "MaxPool") if kept is not None else None
        conv = only_consumer(pool.output[0], "Conv") if pool is not None else None
        if (conv is None or conv.input[1] not in constants or conv.input[0] != pool.output[0]
                or len(consumers[conv.input[1]]) != 1):  # a weight another node reads stays as it is
            continue
        weight = onnx.numpy_helper.to_array(constants[conv.input[1]])
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        if (weight.shape[2:] != (1, 1) or attributes.get("group", 1) != 1 or weight.shape[1] != len(kept)
                or len(set(kept)) != len(kept)):
            continue
        wide = np.zeros((weight.shape[0], shapes[node.input[0]][1], 1, 1), weight.dtype)
        wide[:, kept] = weight
        constants[conv.input[1]].CopyFrom(onnx.numpy_helper.from_array(wide, conv.input[1]))
        pool.input[0] = node.input[0]
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    if folded:  # the pools' and convolutions' inputs changed shape: let ONNX Runtime infer them again
        del model.graph.value_info[:]
    return len(folded)


def _selected_channels(node: onnx.NodeProto, constants: dict, shapes: dict) -> list[int] | None:
    """The input channels a constant Slice or Gather on axis 1 of a 4-D tensor keeps, in order; None for any other
    node."""
    def value(name: str):
        return onnx.numpy_helper.to_array(constants[name]) if name in constants else None

    channels = shapes.get(node.input[0], [0])[1:2] if node.input else []
    if not channels or channels[0] <= 0 or len(shapes.get(node.input[0], [])) != 4:
        return None
    if node.op_type == "Slice" and len(node.input) == 5:
        starts, ends, axes, steps = (value(name) for name in node.input[1:])
        if any(v is None for v in (starts, ends, axes, steps)) or axes.tolist() != [1]:
            return None
        return list(range(channels[0]))[int(starts[0]):int(ends[0]):int(steps[0])]
    if node.op_type == "Gather":
        indices = value(node.input[1])
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if indices is None or axis != 1 or indices.ndim != 1:
            return None
        return [int(i) % channels[0] for i in indices]
    return None


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
