"""ONNX Runtime int8 QDQ: from ranges of the calibration registry measured in ONNX Runtime (against its fp32 source,
and against the PyTorch path's rule on the same tensor) and from the PyTorch int8 model's quantization (against that
model)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization.calibrate import load_tensors_data

from lprnet.compile.onnx_export import export_onnx
from lprnet.compile.onnx_int8 import (
    ONNX_METHODS,
    TORCH_RANGES,
    calibrate_onnx,
    check_onnx_method,
    context_nodes,
    onnx_runtime_plan,
    quantize_qdq,
    torch_int8_plan,
)
from lprnet.model.data import to_network_input
from lprnet.optimize.calibrate import ACTIVATION_DTYPE_ARGS, METHODS, calibrate
from lprnet.runtime.onnx_runtime import onnx_session
from lprnet.runtime.predictor import load_predictor
from tests.conftest import REPO


def assert_no_exporter_metadata(path):
    """No node or value of the model at `path` keeps torch's exporter annotations, and no path of this checkout."""
    proto = onnx.load(str(path))
    items = (*proto.graph.node, *proto.graph.input, *proto.graph.output, *proto.graph.value_info)
    assert not [p.key for item in items for p in item.metadata_props if p.key.startswith("pkg.torch.onnx")]
    assert str(REPO).encode() not in path.read_bytes()


@pytest.fixture(scope="module")
def float_model():
    from lprnet.model.network import LPRNet, LPRNetConfig

    torch.manual_seed(1)
    return LPRNet(LPRNetConfig(num_classes=35)).eval()


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, float_model):
    from lprnet.model.alphabet import get_alphabet

    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_onnx(float_model, get_alphabet("latin"), path)
    return path


# Entropy is left out, as in test_quantize.py: on a random network's sparse class scores it clips far too much.
@pytest.mark.parametrize("method", ["minmax", "percentile", "histogram"])
def test_qdq_model_follows_its_fp32_source(tmp_path, fp32_onnx, images_and_labels, method):
    images, _ = images_and_labels
    cache = tmp_path / "ranges.json"
    calibrate_onnx(fp32_onnx, images[:16], method, cache)
    quantize_qdq(onnx_runtime_plan(onnx.load(str(fp32_onnx)), cache), tmp_path / "int8.onnx")
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
    assert_no_exporter_metadata(tmp_path / "int8.onnx")


@pytest.mark.parametrize("method", ["magic", TORCH_RANGES])
def test_unknown_method_is_refused_with_the_registrys_names(tmp_path, fp32_onnx, images_and_labels, method):
    # `torch` is a source of ranges for the int8 model, not a method to calibrate the ONNX graph with.
    with pytest.raises(ValueError, match=f"unknown calibration method '{method}'; choose one of: "
                                         "entropy, histogram, minmax, percentile$"):
        calibrate_onnx(fp32_onnx, images_and_labels[0], method, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_both_runtimes_accept_the_same_method_names():
    assert set(METHODS) == {"minmax", "percentile", "entropy", "histogram"}
    assert ONNX_METHODS == (TORCH_RANGES, *sorted(METHODS))
    for name in ONNX_METHODS:
        check_onnx_method(name)
    with pytest.raises(ValueError, match="'kl'; choose one of: torch, entropy, histogram, minmax, percentile$"):
        check_onnx_method("kl")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_onnx_runtime_ranges_follow_the_pytorch_paths_rule(tmp_path, float_model, fp32_onnx, method):
    """The network input is the one tensor both runtimes see bit for bit: its ONNX range is the PyTorch observer's
    range under the same method, exactly (same statistics, same rule, same percentile)."""
    # Pixels in a narrow band with a few outliers at both ends, fewer than the percentile clips: every method but
    # minmax clips them, each to its own range. 40 images: a ragged last batch, as in a real split.
    rng = np.random.default_rng(0)
    images = rng.normal(128, 12, size=(40, 24, 94, 3)).clip(0, 255).astype(np.uint8)
    images.flat[rng.choice(images.size, 10, replace=False)] = [0] * 5 + [255] * 5
    calibrate_onnx(fp32_onnx, images, method, tmp_path / "ranges.json")
    ranges = load_tensors_data(tmp_path / "ranges.json")
    assert len(ranges.data) > 20  # every input and output of the Conv and MaxPool nodes
    observer = METHODS[method](**ACTIVATION_DTYPE_ARGS)
    observer.load_state_dict(calibrate(float_model, images, method)["observers"]["x"])
    low, high = (float(value) for value in observer.select_range())
    onnx_range = ranges["images"]
    assert (float(onnx_range.range_value[0]), float(onnx_range.range_value[1])) == (low, high)
    full = (float(observer.min_val), float(observer.max_val))
    assert ((low, high) == full) == (method == "minmax")


def int8_torch_model(model, images):
    from lprnet.optimize.calibrate import calibrate
    from lprnet.optimize.quantize import quantize

    return quantize(model, calibrate(model, images, "histogram"))


@pytest.fixture(scope="module")
def random_exported(tmp_path_factory):
    """conftest's random model (seed 0), its fp32 ONNX export and its PyTorch int8 model, made once for the tests
    below (an export takes seconds); none of them writes to the export."""
    from lprnet.model.alphabet import get_alphabet
    from lprnet.model.synth import render_split
    from tests.conftest import make_random_model

    latin = get_alphabet("latin")
    model = make_random_model(latin)
    images, _ = render_split(seed=3, split="test", count=24, symbols=latin.symbols)  # conftest's images_and_labels
    path = tmp_path_factory.mktemp("random") / "fp32.onnx"
    export_onnx(model, latin, path)
    return model, path, int8_torch_model(model, images)


def test_the_qdq_model_takes_the_torch_int8_quantization(tmp_path, random_exported, images_and_labels):
    images, _ = images_and_labels
    random_model, fp32_path, torch_int8 = random_exported
    plan = torch_int8_plan(onnx.load(str(fp32_path)), torch_int8)
    quantize_qdq(plan, tmp_path / "int8.onnx")
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}

    # Every activation scale of the PyTorch model is one of the QDQ graph's, and no other.
    torch_scales = {float(m.scale) for m in torch_int8.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d)}
    torch_scales |= {float(getattr(torch_int8, n.args[1].target)) for n in torch_int8.graph.nodes
                     if n.target is torch.quantize_per_tensor}
    onnx_scales = {float(initializers[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert np.allclose(sorted(onnx_scales), sorted(torch_scales), rtol=1e-6)
    # The convolutions PyTorch computes in float (block 3's output, container) read float weights here.
    float_convs = [n for n in proto.graph.node if n.name in plan.keep_float]
    assert len(float_convs) == 2 and all(n.input[1] in initializers for n in float_convs)

    x = to_network_input(images)
    with torch.no_grad():
        reference, float_logits = torch_int8(torch.from_numpy(x)).numpy(), random_model(torch.from_numpy(x)).numpy()
    ours = load_predictor(tmp_path / "int8.onnx")(x)
    # A plan that missed a range or a weight would be further from the PyTorch int8 model than fp32 is.
    assert np.abs(ours - reference).mean() < 0.5 * np.abs(float_logits - reference).mean()
    assert_no_exporter_metadata(tmp_path / "int8.onnx")


def test_onnx_runtime_runs_the_int8_models_max_pools_in_float(tmp_path, random_exported, images_and_labels):
    import onnxruntime as ort

    images, _ = images_and_labels
    _, fp32_path, torch_int8 = random_exported
    quantize_qdq(torch_int8_plan(onnx.load(str(fp32_path)), torch_int8), tmp_path / "int8.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "default.onnx")
    default = ort.InferenceSession(str(tmp_path / "int8.onnx"), options, providers=["CPUExecutionProvider"])
    ours = onnx_session(tmp_path / "int8.onnx", optimized_model_path=tmp_path / "ours.onnx")

    def pools_reading_uint8(optimized):
        graph = onnx.load(str(optimized)).graph
        quantized = {out for node in graph.node if node.op_type == "QuantizeLinear" for out in node.output}
        return [node.name for node in graph.node if node.op_type == "MaxPool" and node.input[0] in quantized]

    # A default session moves the quantize above the channel-selecting pools (ONNX Runtime's slow uint8 NCHW pool);
    # ours keeps them float, and computes the same logits.
    assert len(pools_reading_uint8(tmp_path / "default.onnx")) == 2
    assert pools_reading_uint8(tmp_path / "ours.onnx") == []
    x = to_network_input(images)
    assert np.array_equal(ours.run(None, {"images": x})[0], default.run(None, {"images": x})[0])


def test_an_int8_model_of_another_architecture_is_refused(random_exported, images_and_labels):
    import dataclasses

    from lprnet.model.network import LPRNet

    random_model, fp32_path, _ = random_exported
    other = LPRNet(dataclasses.replace(random_model.config, num_classes=random_model.config.num_classes + 1)).eval()
    with pytest.raises(ValueError, match=r"expected one ONNX Conv with \(36, .*\) weights left, found 0"):
        torch_int8_plan(onnx.load(str(fp32_path)), int8_torch_model(other, images_and_labels[0]))


def test_layers_kept_float_in_pytorch_are_float_in_the_qdq_model(tmp_path, random_exported, images_and_labels):
    from lprnet.optimize.calibrate import calibrate
    from lprnet.optimize.quantize import quantize

    images, _ = images_and_labels
    random_model, fp32_path, _ = random_exported
    float_layers = ("backbone.0", "backbone.7.pool", "backbone.16")  # a conv before a pool, a pool, a conv + dropout
    mixed = quantize(random_model, calibrate(random_model, images, "histogram"), float_layers)
    plan = torch_int8_plan(onnx.load(str(fp32_path)), mixed)
    quantize_qdq(plan, tmp_path / "int8.onnx")
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    float_nodes = [node for node in graph.node if node.name in plan.keep_float]
    # block 3's output and container as before, plus the two convs and the pool kept float: none reads int8 values
    assert sorted(node.op_type for node in float_nodes) == ["Conv", "Conv", "Conv", "Conv", "MaxPool"]
    initializers = {init.name for init in graph.initializer}
    assert all(node.input[0] not in dequantized and node.input[1] in initializers
               for node in float_nodes if node.op_type == "Conv")
    # The float convs read the PyTorch model's float weights (batch norm folded), not int8-rounded ones.
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    stem = next(node for node in float_nodes if node.op_type == "Conv" and weights[node.input[1]].shape[1] == 3)
    assert np.array_equal(weights[stem.input[1]], mixed.get_submodule("backbone.0")[0].weight.detach().numpy())
    x = to_network_input(images)
    with torch.no_grad():
        reference, float_logits = mixed(torch.from_numpy(x)).numpy(), random_model(torch.from_numpy(x)).numpy()
    ours = load_predictor(tmp_path / "int8.onnx")(x)
    assert np.abs(ours - reference).mean() < 0.5 * np.abs(float_logits - reference).mean()
