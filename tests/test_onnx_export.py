"""ONNX export: the file holds the graph, its weights and the alphabet, nothing about where the code that exported it
lives (the exporter's stack traces, qualnames and name scopes are stripped), and ONNX Runtime computes the same."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lprnet.compile.onnx_export import export_onnx, strip_exporter_metadata
from lprnet.model.data import to_network_input
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH
from lprnet.runtime.onnx_runtime import onnx_session
from tests.conftest import REPO

EXPORTER_PREFIX = "pkg.torch.onnx"


def metadata_keys(model: onnx.ModelProto) -> list[str]:
    """Every metadata_props key below the model level: graphs (and subgraphs), functions, nodes, values."""
    keys = []

    def visit(graph: onnx.GraphProto):
        keys.extend(p.key for p in graph.metadata_props)
        for item in (*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
            keys.extend(p.key for p in item.metadata_props)
        for node in graph.node:
            for attribute in node.attribute:
                for subgraph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else []):
                    visit(subgraph)
                for subgraph in attribute.graphs:
                    visit(subgraph)

    visit(model.graph)
    for function in model.functions:
        keys.extend(p.key for p in function.metadata_props)
        for node in function.node:
            keys.extend(p.key for p in node.metadata_props)
    return keys


@pytest.fixture
def exported(tmp_path, random_model, latin) -> Path:
    path = tmp_path / "fp32.onnx"
    export_onnx(random_model, latin, path)
    return path


def test_the_export_keeps_no_exporter_metadata_and_no_path_of_the_checkout(exported):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert not [key for key in metadata_keys(model) if key.startswith(EXPORTER_PREFIX)]
    assert metadata_keys(model) == []
    assert {p.key: p.value for p in model.metadata_props} == {"alphabet": "latin"}
    data = exported.read_bytes()
    for path in (REPO, Path(torch.__file__).parent, Path(sys.prefix)):
        assert str(path).encode() not in data, path
    assert b"lprnet.model.network" not in data  # the exporter's class hierarchy of Python qualnames


def test_stripping_removes_what_the_exporter_writes_and_changes_no_output(tmp_path, random_model, exported,
                                                                          images_and_labels):
    # What the test above guards against: torch's exporter writes stack traces with this checkout's paths.
    program = torch.onnx.export(random_model.eval(), (torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH),), dynamo=True,
                                input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    raw = program.model_proto
    assert any(key.startswith(EXPORTER_PREFIX) for key in metadata_keys(raw))
    assert str(REPO).encode() in raw.SerializeToString()
    onnx.save(raw, str(tmp_path / "raw.onnx"))
    x = to_network_input(images_and_labels[0])
    ours = onnx_session(exported).run(None, {"images": x})[0]
    np.testing.assert_array_equal(ours, onnx_session(tmp_path / "raw.onnx").run(None, {"images": x})[0])
    strip_exporter_metadata(raw)
    assert metadata_keys(raw) == []


def test_the_export_does_not_depend_on_where_the_code_is_or_its_line_numbers(tmp_path, random_model, latin,
                                                                             exported):
    # A copy of the package in another folder, its network module shifted by a few lines, exports the same weights.
    elsewhere = tmp_path / "another checkout"
    shutil.copytree(REPO / "lprnet", elsewhere / "lprnet", ignore=shutil.ignore_patterns("__pycache__"))
    network = elsewhere / "lprnet" / "model" / "network.py"
    network.write_text("# moved\n\n\n" + network.read_text(encoding="utf-8"), encoding="utf-8")
    torch.save(random_model.state_dict(), tmp_path / "weights.pt")
    script = (
        "import sys, torch\n"
        "import lprnet\n"
        f"assert lprnet.__file__.startswith({str(elsewhere)!r}), lprnet.__file__\n"
        "from lprnet.compile.onnx_export import export_onnx\n"
        "from lprnet.model.alphabet import get_alphabet\n"
        "from lprnet.model.network import LPRNet, LPRNetConfig\n"
        "alphabet = get_alphabet(sys.argv[1])\n"
        "model = LPRNet(LPRNetConfig(num_classes=alphabet.num_classes))\n"
        "model.load_state_dict(torch.load(sys.argv[2], weights_only=True))\n"
        "export_onnx(model.eval(), alphabet, sys.argv[3])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(elsewhere)}
    result = subprocess.run([sys.executable, "-c", script, latin.name, str(tmp_path / "weights.pt"),
                             str(tmp_path / "moved.onnx")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "moved.onnx").read_bytes() == exported.read_bytes()


def test_strip_reaches_subgraphs_and_functions():
    def annotated(node: onnx.NodeProto) -> onnx.NodeProto:
        node.metadata_props.add(key=f"{EXPORTER_PREFIX}.stack_trace", value="/somewhere/file.py")
        return node

    def branch(name: str) -> onnx.GraphProto:
        graph = onnx.helper.make_graph([annotated(onnx.helper.make_node("Identity", ["x"], [f"{name}_out"]))],
                                       name, [], [onnx.helper.make_tensor_value_info(f"{name}_out",
                                                                                     onnx.TensorProto.FLOAT, [1])])
        graph.metadata_props.add(key="pkg.torch.export.graph_signature", value="...")
        return graph

    condition = onnx.helper.make_tensor_value_info("condition", onnx.TensorProto.BOOL, [])
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    x.metadata_props.add(key=f"{EXPORTER_PREFIX}.original_node_name", value="x")
    if_node = annotated(onnx.helper.make_node("If", ["condition"], ["branch_out"], then_branch=branch("then"),
                                              else_branch=branch("else")))
    call = annotated(onnx.helper.make_node("Twice", ["branch_out"], ["y"], domain="local"))
    function = onnx.helper.make_function("local", "Twice", ["a"], ["b"],
                                         [annotated(onnx.helper.make_node("Add", ["a", "a"], ["b"]))],
                                         [onnx.helper.make_opsetid("", 18)])
    model = onnx.helper.make_model(onnx.helper.make_graph([if_node, call], "main", [condition, x], [y]),
                                   functions=[function], opset_imports=[onnx.helper.make_opsetid("", 18),
                                                                        onnx.helper.make_opsetid("local", 1)])
    model.functions[0].metadata_props.add(key="pkg.onnxscript.rewriter.rule_name", value="...")
    onnx.helper.set_model_props(model, {"alphabet": "latin"})
    assert len(metadata_keys(model)) == 9
    strip_exporter_metadata(model)
    assert metadata_keys(model) == []
    assert {p.key: p.value for p in model.metadata_props} == {"alphabet": "latin"}
    onnx.checker.check_model(model)
