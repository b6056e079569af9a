"""Calibration and int8 quantization: range rules against references, artifacts, fidelity to fp32, accuracy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.ao.quantization.observer import HistogramObserver

from lprnet.model.checkpoint import load_model, save_model
from lprnet.model.data import hash_split, list_images, load_folder
from lprnet.model.network import LPRNet, LPRNetConfig
from lprnet.optimize.calibrate import (
    ACTIVATION_DTYPE_ARGS,
    METHODS,
    PERCENTILE,
    EntropyRange,
    L2Range,
    MinMaxRange,
    PercentileRange,
    calibrate,
    kl_optimal_end_bin,
    load_calibration,
    save_calibration,
)
from lprnet.optimize.quantize import FORMAT, is_quantized_artifact, load_quantized, quantize, save_quantized
from lprnet.runtime.evaluate import evaluate, predict_texts
from lprnet.runtime.torch_runtime import TorchPredictor
from tests.conftest import as_input, repo_params


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX-512 or AVX) int8 dot products, which the int8 scheme is for (8-bit activations,
    calibrate.ACTIVATION_DTYPE_ARGS): without them FBGEMM adds pairs of u8 x s8 products in int16 first
    (vpmaddubsw), which saturates, and the int8 model loses accuracy that a VNNI CPU does not."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


needs_vnni = pytest.mark.skipif(not cpu_has_vnni(), reason="no VNNI on this CPU: FBGEMM's AVX2 int8 kernels saturate "
                                                           "with 8-bit activations (the scheme is for VNNI CPUs)")

DEFAULT_METHOD = repo_params("calibrate")["method"]  # params.yaml's, the one home of every default
# The entropy rule is left out of the random-model fidelity test: KL search mis-clips the sparse histograms of a
# random network's class tap, a known limit of the rule, not of this code.
ROBUST_METHODS = ("minmax", "histogram", "percentile")


@pytest.fixture
def calibration_images(latin):
    from lprnet.model.synth import render_split

    images, _ = render_split(seed=3, split="calib", count=16, symbols=latin.symbols)
    return images


def observe(observer_class, values: torch.Tensor):
    observer = observer_class(**ACTIVATION_DTYPE_ARGS)
    for chunk in values.split(len(values) // 4):
        observer(chunk)
    return observer


def test_unknown_method_lists_the_valid_names(random_model, calibration_images):
    with pytest.raises(ValueError, match="unknown calibration method 'kl'") as error:
        calibrate(random_model, calibration_images, "kl")
    assert str(error.value).endswith("choose one of: entropy, histogram, minmax, percentile")
    for name in METHODS:
        assert name in str(error.value)


def test_calibrate_rejects_images_that_are_not_uint8_bgr(random_model, calibration_images):
    with pytest.raises(ValueError, match="uint8"):
        calibrate(random_model, calibration_images.astype(np.float32), DEFAULT_METHOD)


def test_minmax_range_is_the_exact_range():
    values = torch.randn(4000).abs() * 3
    low, high = observe(MinMaxRange, values).select_range()
    assert float(low) == float(values.min()) and float(high) == float(values.max())


def test_histogram_range_matches_pytorchs_histogram_observer():
    values = torch.cat([torch.randn(20000).abs(), torch.rand(200) * 50])  # a 1 % tail of outliers
    reference = observe(HistogramObserver, values).calculate_qparams()
    ours = observe(L2Range, values).calculate_qparams()
    assert torch.equal(ours[0], reference[0]) and torch.equal(ours[1], reference[1])
    assert float(ours[0]) * 255 < float(values.max())  # the tail was clipped


def test_percentile_range_matches_numpy_within_a_bin():
    values = torch.randn(40000)
    observer = observe(PercentileRange, values)
    low, high = observer.select_range()
    bin_width = float(observer.max_val - observer.min_val) / observer.bins
    assert PercentileRange.percentile == PERCENTILE  # the one percentile of both runtimes (see test_quantize_onnx)
    expected = np.percentile(values.numpy(), [100 - PERCENTILE, PERCENTILE])
    assert abs(float(low) - expected[0]) <= 2 * bin_width and abs(float(high) - expected[1]) <= 2 * bin_width


def test_entropy_keeps_a_uniform_range_and_clips_a_sparse_tail():
    assert kl_optimal_end_bin(np.ones(1024), 256) == 1024
    dense_then_sparse = np.zeros(2048)
    dense_then_sparse[:400] = np.linspace(1000, 10, 400)
    dense_then_sparse[1500::50] = 1  # a handful of outliers far out
    assert 400 <= kl_optimal_end_bin(dense_then_sparse, 256) < 1500
    relu_like = torch.cat([torch.zeros(30000), torch.randn(30000).abs(), torch.tensor([60.0])])
    low, high = observe(EntropyRange, relu_like).select_range()
    assert float(low) == 0 and 3 < float(high) < 60


def test_calibration_round_trips_with_weights_only(tmp_path, random_model, calibration_images):
    calibration = calibrate(random_model, calibration_images, "percentile", batch_size=5)
    path = tmp_path / "calibration.pt"
    save_calibration(path, calibration)
    raw = torch.load(path, weights_only=True)
    loaded = load_calibration(path)
    assert loaded["method"] == raw["method"] == "percentile"
    assert loaded["num_images"] == len(calibration_images)
    assert set(loaded["observers"]) == set(calibration["observers"])
    for name, statistics in calibration["observers"].items():
        for key, value in statistics.items():
            assert torch.equal(loaded["observers"][name][key], value), (name, key)
    # The network input is observed whole: every pixel of every calibration image is in its histogram.
    network_input = loaded["observers"]["x"]
    assert int(network_input["histogram"].sum()) == calibration_images[..., 0].size * 3
    assert -1 <= float(network_input["min_val"]) < 0 < float(network_input["max_val"]) <= 1


def test_load_calibration_rejects_other_files(tmp_path, random_model, latin):
    path = tmp_path / "model.pt"
    save_model(path, random_model, latin)
    with pytest.raises(ValueError, match="not a calibration artifact"):
        load_calibration(path)
    with pytest.raises(FileNotFoundError):
        load_calibration(tmp_path / "missing.pt")


@needs_vnni
@pytest.mark.parametrize("method", ROBUST_METHODS)
def test_int8_logits_close_to_fp32_on_a_random_model(method, random_model, calibration_images, images_and_labels):
    quantized = quantize(random_model, calibrate(random_model, calibration_images, method))
    int8_convs = [m for m in quantized.modules() if type(m).__module__.startswith("torch.ao.nn.intrinsic.quantized")]
    assert len(int8_convs) >= 10, "the backbone was not converted to int8"
    x = as_input(images_and_labels[0])
    with torch.no_grad():
        reference, logits = random_model(x), quantized(x)
    relative_error = float((logits - reference).norm() / reference.norm())
    assert 0 < relative_error < 0.03
    assert float((logits.argmax(1) == reference.argmax(1)).float().mean()) > 0.9


def test_quantize_rejects_a_calibration_of_other_weights(random_model, calibration_images):
    calibration = calibrate(random_model, calibration_images, "minmax")
    with torch.no_grad():
        random_model.container[0].bias.add_(0.1)
    with pytest.raises(ValueError, match="different weights"):
        quantize(random_model, calibration)


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # torch.load's own quantized-tensor rebuild
def test_save_load_round_trip_gives_identical_logits(tmp_path, random_model, latin, calibration_images,
                                                    images_and_labels):
    calibration = calibrate(random_model, calibration_images, DEFAULT_METHOD)
    quantized = quantize(random_model, calibration)
    path = tmp_path / "int8.pt"
    save_quantized(path, random_model.config, latin, quantized, calibration)
    payload = torch.load(path, weights_only=True)  # no pickled code: plain tensors and strings
    assert payload["format"] == FORMAT and payload["method"] == DEFAULT_METHOD
    assert is_quantized_artifact(path)
    loaded, alphabet = load_quantized(path)
    assert alphabet == latin
    x = as_input(images_and_labels[0])
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_loading_an_int8_model_in_a_fresh_process_imports_no_compiler(tmp_path, random_model, latin,
                                                                     calibration_images):
    """Without calibrate.untraced_fx, the FX tracer's stack traces import torch._dynamo and torch._inductor: 3 s in
    every process that loads an int8 model (benchmark, select, `lprnet predict`)."""
    calibration = calibrate(random_model, calibration_images, DEFAULT_METHOD)
    path = tmp_path / "int8.pt"
    save_quantized(path, random_model.config, latin, quantize(random_model, calibration), calibration)
    code = ("import sys\nfrom lprnet.optimize.quantize import load_quantized\nload_quantized(sys.argv[1])\n"
            "print([name for name in ('torch._dynamo', 'torch._inductor') if name in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_a_pruned_layout_quantizes_and_round_trips(tmp_path, latin, calibration_images, images_and_labels):
    # Uneven kept pool channels take the index-select path, and the widths no longer match the published ones.
    config = LPRNetConfig(num_classes=latin.num_classes, stem=48, block1=96, block2=200, block3=180, head=160,
                          mid1=20, mid2=40, mid3=50, pool1_keep=(0, 3, 5, 10, 40, 95),
                          pool2_keep=tuple(range(0, 180, 3)), context_divisors=(64, 128, 256, 0))
    torch.manual_seed(1)
    model = LPRNet(config).eval()
    calibration = calibrate(model, calibration_images, DEFAULT_METHOD)
    quantized = quantize(model, calibration)
    save_quantized(tmp_path / "int8.pt", config, latin, quantized, calibration)
    loaded, _ = load_quantized(tmp_path / "int8.pt")
    x = as_input(images_and_labels[0])
    with torch.no_grad():
        reference, logits = model(x), quantized(x)
        assert torch.equal(loaded(x), logits)
    assert float((logits - reference).norm() / reference.norm()) < 0.1


def test_int8_artifact_is_under_30_percent_of_fp32(tmp_path, random_model, latin, calibration_images):
    calibration = calibrate(random_model, calibration_images, DEFAULT_METHOD)
    save_model(tmp_path / "fp32.pt", random_model, latin)
    save_quantized(tmp_path / "int8.pt", random_model.config, latin, quantize(random_model, calibration), calibration)
    ratio = (tmp_path / "int8.pt").stat().st_size / (tmp_path / "fp32.pt").stat().st_size
    assert ratio <= 0.30


def test_other_files_are_not_int8_artifacts(tmp_path, random_model, latin):
    save_model(tmp_path / "fp32.pt", random_model, latin)
    (tmp_path / "text.pt").write_text("not a model")
    assert not is_quantized_artifact(tmp_path / "fp32.pt")
    assert not is_quantized_artifact(tmp_path / "text.pt")
    with pytest.raises(ValueError, match="not an int8 LPRNet artifact"):
        load_quantized(tmp_path / "fp32.pt")


@needs_vnni  # without VNNI, FBGEMM's batch-1 and batched kernels saturate at different points (seen at 1 thread)
def test_int8_predictions_do_not_depend_on_batch_size(random_model, latin, calibration_images, images_and_labels):
    predictor = TorchPredictor(quantize(random_model, calibrate(random_model, calibration_images, DEFAULT_METHOD)),
                               latin)
    x = as_input(images_and_labels[0]).numpy()
    one_by_one = np.concatenate([predictor(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(predictor(x[:16]), one_by_one[:16])


@needs_vnni
def test_published_int8_within_one_point_of_fp32(published_weights, published_images):
    model, alphabet = load_model(published_weights)
    files = list_images(published_images)
    images, labels = load_folder(files, alphabet)
    shares = {"calib": 0.2, "train": 0.3, "test": 0.5}
    in_calibration = np.array([hash_split(path.name, shares) == "calib" for path in files])
    assert 0 < in_calibration.sum() < len(files)
    quantized = quantize(model, calibrate(model, images[in_calibration], DEFAULT_METHOD))

    fp32 = evaluate(TorchPredictor(model, alphabet), images, labels, batch_size=1)
    int8_predictor = TorchPredictor(quantized, alphabet)
    int8 = evaluate(int8_predictor, images, labels, batch_size=1)
    assert int8["num_images"] == len(files)
    assert int8["accuracy"] >= fp32["accuracy"] - 0.01, (fp32, int8)
    assert predict_texts(int8_predictor, images, batch_size=16) == predict_texts(int8_predictor, images, batch_size=1)


# ---------------------------------------------------------------------------------------------------------------
# Layers kept float (the quantize stage's fallback to the accuracy budget).

@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_every_single_layer_kept_float_computes_in_float_and_round_trips(tmp_path, random_model, latin,
                                                                         calibration_images, images_and_labels):
    from lprnet.optimize.calibrate import int8_layers

    calibration = calibrate(random_model, calibration_images, DEFAULT_METHOD)
    x = as_input(images_and_labels[0])
    with torch.no_grad():
        reference = random_model(x)
        all_int8_error = float((quantize(random_model, calibration)(x) - reference).norm())
    layers = int8_layers(random_model)
    assert "backbone.0" in layers and "backbone.3" in layers and layers["backbone.16"] == ("backbone.16", "backbone.19")
    errors = {}
    for layer in layers:  # one calibration covers every split, max pools included
        mixed = quantize(random_model, calibration, (layer,))
        kept = mixed.get_submodule(layer)
        if isinstance(kept, torch.nn.MaxPool2d):
            assert layer.endswith("pool") or layer == "backbone.3"
        else:  # the fused conv + ReLU (or the context's lone conv), with the float model's (batch-norm folded) weights
            conv = kept if isinstance(kept, torch.nn.Conv2d) else kept[0]
            assert type(conv) is torch.nn.Conv2d and not conv.weight.is_quantized
        with torch.no_grad():
            errors[layer] = float((mixed(x) - reference).norm())
    # Keeping a convolution float takes its rounding out: on some layer the logits move towards fp32.
    assert min(errors.values()) < all_int8_error
    float_layers = ("backbone.4.block.2", "backbone.7.pool")
    mixed = quantize(random_model, calibration, float_layers)
    save_quantized(tmp_path / "mixed.pt", random_model.config, latin, mixed, calibration, float_layers)
    assert torch.load(tmp_path / "mixed.pt", weights_only=True)["float_layers"] == list(float_layers)
    loaded, _ = load_quantized(tmp_path / "mixed.pt")
    with torch.no_grad():
        assert torch.equal(loaded(x), mixed(x))


def test_every_layer_float_is_the_float_model(random_model, calibration_images, images_and_labels):
    from lprnet.optimize.calibrate import int8_layers

    calibration = calibrate(random_model, calibration_images, DEFAULT_METHOD)
    everything = quantize(random_model, calibration, tuple(int8_layers(random_model)))
    x = as_input(images_and_labels[0])
    with torch.no_grad():
        # The global context's convolutions (calibrate.FLOAT_MODULES) get their float weights back too.
        assert float((everything(x) - random_model(x)).abs().max()) < 1e-4 * float(random_model(x).abs().max())


@pytest.mark.parametrize("float_layers,message", [
    (("backbone.99",), r"float_layers names \['backbone.99'\] that are not int8 layers"),
    (("pool_stem",), r"not int8 layers"),  # the context's average pool: always float, not a choice
    (("backbone.0", "backbone.0"), "distinct layer names"),
    ("backbone.0", "must be a list"),
])
def test_unknown_float_layers_are_refused_by_name(random_model, calibration_images, float_layers, message):
    calibration = calibrate(random_model, calibration_images, "minmax")
    with pytest.raises(ValueError, match=message):
        quantize(random_model, calibration, float_layers)


def test_a_saved_float_layer_list_that_names_no_layer_is_refused(tmp_path, random_model, latin, calibration_images):
    calibration = calibrate(random_model, calibration_images, "minmax")
    save_quantized(tmp_path / "int8.pt", random_model.config, latin, quantize(random_model, calibration), calibration)
    payload = torch.load(tmp_path / "int8.pt", weights_only=True)
    payload["float_layers"] = ["backbone.1"]  # a batch norm, folded into its conv
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=r"edited.pt: float_layers names \['backbone.1'\]"):
        load_quantized(tmp_path / "edited.pt")
