"""TVM (Relax) against ONNX Runtime: import, graph passes, layout passes, build and the artifact folder.

Each module is imported, transformed and built once per test module (builds take seconds): the conftest fixtures
are function-scoped, so a module-scoped cache holds what the first test to need it built.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from lprnet.compile.onnx_export import export_onnx  # noqa: E402
from lprnet.compile.tvm.artifact import IR_FILE, LIBRARY_FILE, MANIFEST_FILE, save_artifact  # noqa: E402
from lprnet.compile.tvm.batched import batched_module  # noqa: E402
from lprnet.compile.tvm.build import build, detect_target  # noqa: E402
from lprnet.compile.tvm.frontend import import_onnx, module_input_shape  # noqa: E402
from lprnet.compile.tvm.passes import PIPELINES, apply_passes, count_ops  # noqa: E402
from lprnet.pipeline.tvm_tune_step import check_batched  # noqa: E402
from lprnet.runtime.predictor import example_input, load_predictor  # noqa: E402
from lprnet.runtime.tvm_runtime import TVMPredictor  # noqa: E402
from tests.conftest import TEST_LLVM_TARGET, main_constants  # noqa: E402

PARITY_ATOL = 1e-3  # max abs logit difference to ONNX Runtime
HOST = detect_target(TEST_LLVM_TARGET)


@pytest.fixture(scope="module")
def cache() -> dict:
    return {}


def once(cache: dict, key: str, make):
    if key not in cache:
        cache[key] = make()
    return cache[key]


@pytest.fixture
def onnx_path(cache, tmp_path_factory, random_model, latin):
    def export():
        path = tmp_path_factory.mktemp("onnx") / "model.onnx"
        export_onnx(random_model, latin, path)
        return path

    return once(cache, "onnx", export)


@pytest.fixture
def modules(cache, onnx_path) -> dict:
    """Imported, after the default graph passes, after those and the default layout passes (NHWC)."""

    def make():
        imported = import_onnx(onnx_path)
        graph = apply_passes(imported, PIPELINES["graph"])
        layout = apply_passes(graph, PIPELINES["layout"],
                                          layout="NHWC")
        return {"imported": imported, "graph": graph, "layout": layout}

    return once(cache, "modules", make)


@pytest.fixture
def executables(cache, modules) -> dict:
    return once(cache, "executables", lambda: {key: build(mod, HOST) for key, mod in modules.items()})


@pytest.fixture
def artifact(cache, tmp_path_factory, executables, modules, latin):
    def save():
        folder = tmp_path_factory.mktemp("artifact") / "lprnet-tvm"
        save_artifact(folder, executables["layout"], modules["layout"], HOST,
                                  module_input_shape(modules["layout"]), latin.name,
                                  extra={"layout_passes": list(PIPELINES["layout"])})
        return folder

    return once(cache, "artifact", save)


def run(executable, images: np.ndarray) -> np.ndarray:
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(images)).numpy()


@pytest.mark.parametrize("stage", ["imported", "graph", "layout"])
def test_built_module_matches_onnxruntime(stage, executables, onnx_path):
    images = example_input(1, seed=7)
    expected = load_predictor(onnx_path)(images)
    logits = run(executables[stage], images)
    assert logits.shape == expected.shape
    assert np.abs(logits - expected).max() < PARITY_ATOL


def test_graph_passes_fold_the_constant_bias_reshapes(modules):
    before, after = count_ops(modules["imported"]), count_ops(modules["graph"])
    # The ONNX importer reshapes each conv bias to (1,C,1,1) at run time; folding makes those constants.
    assert after["relax_ops"] < before["relax_ops"]
    assert after["kernels_legalized"] <= before["kernels_legalized"]
    assert before["kernels"] == after["kernels"] == 0  # still high-level operators


def test_layout_passes_convert_to_nhwc_and_fuse_kernels(modules):
    graph = count_ops(modules["graph"])
    layout = count_ops(modules["layout"])
    assert layout["relax_ops"] == 0  # every operator legalized to a TIR kernel
    assert layout["kernels"] < graph["kernels_legalized"]  # fusion: fewer kernels than one per operator
    assert layout["ops"] < graph["ops"]
    # The stem conv's output, (N,C,H,W) = (1,64,22,92), is now held as NHWC.
    assert "(1, 64, 22, 92)" in modules["graph"].script()
    assert "(1, 22, 92, 64)" in modules["layout"].script()


def test_artifact_round_trip_loads_without_recompiling(artifact, executables, latin, monkeypatch):
    images = example_input(3, seed=11)
    per_image = np.concatenate([run(executables["layout"], images[i:i + 1]) for i in range(3)])

    def refuse(*args, **kwargs):
        raise AssertionError("the predictor compiled something")

    monkeypatch.setattr(tvm.relax, "build", refuse)
    monkeypatch.setattr(tvm, "compile", refuse)
    monkeypatch.setattr(tvm.runtime.Executable, "jit", refuse)
    monkeypatch.setattr(tvm.runtime.Executable, "export_library", refuse)
    # threads= sets these process-wide; registering them here makes monkeypatch restore them afterwards.
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    monkeypatch.setenv("TVM_BIND_THREADS", "0")

    predictor = TVMPredictor(artifact, threads=1)
    assert predictor.name == "tvm" and predictor.alphabet == latin and predictor.threads == 1
    logits = predictor(images)
    np.testing.assert_array_equal(logits, per_image)
    assert predictor(images[:0]).shape == (0, *logits.shape[1:])

    manifest = json.loads((artifact / MANIFEST_FILE).read_text())
    assert manifest["target"] == HOST and manifest["input_shape"] == [1, 3, 24, 94]
    assert manifest["alphabet"] == latin.name and manifest["tvm_version"] == tvm.__version__
    assert manifest["layout_passes"] == list(PIPELINES["layout"])
    assert (artifact / IR_FILE).read_text().startswith("# from tvm.script")


def test_workers_return_every_chunk_in_order(artifact, executables, monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # set process-wide by threads=; monkeypatch restores them
    monkeypatch.setenv("TVM_BIND_THREADS", "0")
    images = example_input(7, seed=12)  # 7 chunks over 3 VMs: uneven shares
    per_image = np.concatenate([run(executables["layout"], images[i:i + 1]) for i in range(7)])
    predictor = TVMPredictor(artifact, threads=1, workers=3)
    np.testing.assert_array_equal(predictor(images), per_image)
    np.testing.assert_array_equal(predictor(images[:2]), per_image[:2])  # fewer chunks than workers
    assert predictor(images[:0]).shape == (0, *per_image.shape[1:])
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        TVMPredictor(artifact, threads=1, workers=0)


def test_a_tampered_library_is_refused(artifact, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(artifact, copy)
    library = copy / LIBRARY_FILE
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=LIBRARY_FILE):
        TVMPredictor(copy)


BATCH = 2


@pytest.fixture
def batched_artifact(cache, tmp_path_factory, executables, modules, onnx_path, latin):
    """The layout-passed artifact with a batch-2 build beside it (untuned: tests/test_tune_tvm.py replays records)."""
    def save():
        batched = batched_module(onnx_path, BATCH, PIPELINES["graph"], PIPELINES["layout"], "NHWC")
        folder = tmp_path_factory.mktemp("artifact") / "lprnet-tvm-batched"
        save_artifact(folder, executables["layout"], modules["layout"], HOST, module_input_shape(modules["layout"]),
                      latin.name, batched=(build(batched, HOST), module_input_shape(batched),
                                           {"kernels_scheduled": 0, "kernels": len(batched.functions) - 1}))
        return folder

    return once(cache, "batched_artifact", save)


def test_whole_batches_run_on_the_batched_build_and_the_rest_on_the_batch_1_build(batched_artifact, executables):
    images = example_input(2 * BATCH + 1, seed=13)
    per_image = np.concatenate([run(executables["layout"], images[i:i + 1]) for i in range(len(images))])
    predictor = TVMPredictor(batched_artifact)
    assert predictor.batched_input_shape == (BATCH, 3, 24, 94)
    calls = []
    batched_main = predictor._batched_main
    predictor._batched_main = lambda tensor: calls.append(tensor.shape) or batched_main(tensor)
    np.testing.assert_allclose(predictor(images), per_image, atol=1e-5, rtol=0)
    assert [tuple(shape) for shape in calls] == [(BATCH, 3, 24, 94)] * 2
    np.testing.assert_allclose(predictor(images[:1]), per_image[:1], atol=1e-5, rtol=0)
    assert len(calls) == 2  # one image: the batch-1 build
    assert TVMPredictor(batched_artifact, batched=False).batched_input_shape is None
    manifest = json.loads((batched_artifact / MANIFEST_FILE).read_text())
    assert manifest["batched"]["library"] == f"model_batch{BATCH}.so" and manifest["batched"]["kernels_scheduled"] == 0


def test_the_tune_stage_refuses_a_batched_build_that_reads_plates_otherwise(batched_artifact, latin):
    images = (np.random.default_rng(14).random((2 * BATCH + 1, 24, 94, 3)) * 255).astype(np.uint8)
    predictor = TVMPredictor(batched_artifact)
    checked = check_batched(predictor, images, "here")
    assert checked["batched_build_batch"] == BATCH and checked["batched_max_abs_logit_diff"] < 1e-4
    batched_main = predictor._batched_main
    predictor._batched_main = lambda tensor: tvm.runtime.tensor(-batched_main(tensor).numpy())  # another function
    with pytest.raises(ValueError, match=f"here: the batch-{BATCH} build reads [0-9]+ plates differently"):
        check_batched(predictor, images, "here")


def test_a_tampered_batched_library_or_shape_is_refused(batched_artifact, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(batched_artifact, copy)
    library = copy / f"model_batch{BATCH}.so"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"model_batch{BATCH}.so: SHA-256 does not match"):
        TVMPredictor(copy)
    TVMPredictor(copy, batched=False)  # the batch-1 build alone is intact
    manifest = json.loads((batched_artifact / MANIFEST_FILE).read_text())
    manifest["batched"]["input_shape"] = [BATCH, 3, 24, 95]
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"batched.input_shape \[2, 3, 24, 95\] is not input_shape"):
        TVMPredictor(copy)


def test_an_unknown_pass_name_is_rejected_with_the_valid_names(modules):
    with pytest.raises(ValueError, match="'fold_constants'.*fold_constant"):
        apply_passes(modules["imported"], ["fold_constants"])


def test_an_option_no_pass_takes_is_rejected(modules):
    with pytest.raises(ValueError, match="'layuot'"):
        apply_passes(modules["imported"], ["convert_layout"], layuot="NHWC")


@pytest.mark.parametrize("target, named", [({"kind": "nonsense"}, "nonsense"),
                                           ({"kind": "llvm", "mcpu": "not-a-cpu"}, "not-a-cpu"),
                                           ({"kind": "llvm", "bogus_option": 1}, "bogus_option")])
def test_an_unparsable_target_is_rejected(target, named):
    with pytest.raises(ValueError, match=named) as error:
        detect_target(target)
    assert "\n" not in str(error.value)


def test_detect_target_fills_in_the_host_cpu():
    assert HOST["mcpu"] == tvm.target.codegen.llvm_get_system_cpu()
    assert detect_target({"kind": "llvm", "mcpu": "x86-64"}) == {"kind": "llvm", "mcpu": "x86-64"}


def test_graph_passes_fold_a_batch_norm_into_the_conv(tmp_path, latin):
    """lprnet.compile.onnx_export leaves no BatchNormalization, so a hand-built Conv + BatchNormalization ONNX checks
    the pair."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((4, 3, 3, 3)), "scale": rng.uniform(0.5, 1.5, 4), "bias": rng.normal(size=4),
               "mean": rng.normal(size=4), "var": rng.uniform(0.5, 1.5, 4)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["conv"]),
         helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], ["logits"])],
        "conv_bn", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 3, 24, 94])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4, 22, 92])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {"alphabet": latin.name})
    onnx.save(model, tmp_path / "conv_bn.onnx")

    imported = import_onnx(tmp_path / "conv_bn.onnx")
    folded = apply_passes(imported, PIPELINES["graph"])
    assert "batch_norm" in imported.script() and "batch_norm" not in folded.script()
    assert count_ops(folded)["ops"] == 2  # conv2d + bias add
    images = example_input(1, seed=3)
    np.testing.assert_allclose(run(build(folded, HOST), images),
                               run(build(imported, HOST), images), atol=1e-4)


def test_qdq_pairs_become_arithmetic_that_follows_the_layout_and_fuses(tmp_path, latin):
    """Two convolutions with int8 QDQ pairs as ONNX Runtime's quantizer writes them (QuantizeLinear -> DequantizeLinear
    on every activation, a Relu between two pairs): without qdq_to_arithmetic, ConvertLayout leaves the pairs in NCHW
    between transposes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
                    numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) / 4, "w2"),
                    numpy_helper.from_array(np.array(0.02, np.float32), "s_in"),
                    numpy_helper.from_array(np.array(0.05, np.float32), "s_conv"),
                    numpy_helper.from_array(np.array(128, np.uint8), "z_in"),
                    numpy_helper.from_array(np.array(120, np.uint8), "z_conv")]

    def qdq(name: str, scale: str, zero_point: str, out: str) -> list:
        return [helper.make_node("QuantizeLinear", [name, scale, zero_point], [f"{name}_q"]),
                helper.make_node("DequantizeLinear", [f"{name}_q", scale, zero_point], [out])]

    nodes = [*qdq("images", "s_in", "z_in", "x0"), helper.make_node("Conv", ["x0", "w1"], ["conv1"]),
             *qdq("conv1", "s_conv", "z_conv", "x1"), helper.make_node("Relu", ["x1"], ["relu"]),
             *qdq("relu", "s_conv", "z_conv", "x2"), helper.make_node("Conv", ["x2", "w2"], ["conv2"]),
             *qdq("conv2", "s_conv", "z_conv", "logits")]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 3, 24, 94])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 8, 20, 90])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)  # ORT reads <= 13
    helper.set_model_props(model, {"alphabet": latin.name})
    onnx.save(model, tmp_path / "qdq.onnx")

    imported = import_onnx(tmp_path / "qdq.onnx")
    assert "R.quantize" in imported.script()
    without = [name for name in PIPELINES["graph"] if name != "qdq_to_arithmetic"]
    layouts, kernels = {}, {}
    for key, names in {"with": PIPELINES["graph"], "without": without}.items():
        graph = apply_passes(imported, names)
        layouts[key] = apply_passes(graph, PIPELINES["layout"],
                                                layout="NHWC")
        kernels[key] = [line for line in layouts[key]["main"].script().splitlines() if "call_tir" in line]
    # With the pass: the input's and the output's transposes only, every pair inside a convolution's kernel.
    assert sum("transpose" in call for call in kernels["with"]) == 2
    assert all("conv2d" in call for call in kernels["with"] if "round" in call and "transpose" not in call)
    assert sum("transpose" in call for call in kernels["without"]) > 2
    assert len(kernels["without"]) > len(kernels["with"])
    images = example_input(1, seed=4)
    outputs = {key: run(build(layout, HOST), images) for key, layout in layouts.items()}
    # The same values as TVM's quantize/dequantize kernels (not ONNX Runtime's: its int8 kernels requantize int32
    # sums, which puts a share of these activations a quantization step apart; tvm-graph-passes bounds the accuracy).
    np.testing.assert_allclose(outputs["with"], outputs["without"], atol=1e-5, rtol=0)
    assert np.ptp(outputs["with"]) > 1  # not a constant output that any rewrite would match


def write_int8_conv_onnx(path, latin, in_zero_point: int) -> None:
    """Two convolutions as ONNX Runtime's quantizer writes an int8 QDQ model: uint8 activation pairs, int8 weights with
    per-output-channel scales and zero points 0, int32 biases; channel counts that are not whole VNNI blocks
    (3 -> 6 -> 5) and padded convolutions, so that an input zero point != 0 has to pad with itself."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    arrays = {"w1": rng.integers(-127, 128, (6, 3, 3, 3)).astype(np.int8), "sw1": rng.uniform(2e-3, 4e-3, 6),
              "w2": rng.integers(-127, 128, (5, 6, 3, 1)).astype(np.int8), "sw2": rng.uniform(2e-3, 4e-3, 5),
              "zw1": np.zeros(6, np.int8), "zw2": np.zeros(5, np.int8),
              "b1": rng.integers(-500, 500, 6).astype(np.int32), "b2": rng.integers(-500, 500, 5).astype(np.int32),
              "s_in": np.array(0.0078125), "z_in": np.array(in_zero_point, np.uint8),
              "s_c": np.array(0.02), "z_c": np.array(0, np.uint8)}
    arrays = {name: value.astype(np.float32) if value.dtype == np.float64 else value for name, value in arrays.items()}
    arrays["sb1"], arrays["sb2"] = arrays["s_in"] * arrays["sw1"], arrays["s_c"] * arrays["sw2"]

    def dequantize(name: str, axis: int | None = None) -> onnx.NodeProto:
        zero_point = {"w1": "zw1", "w2": "zw2"}.get(name, "")
        inputs = [name, "s" + name] + ([zero_point] if zero_point else [])
        options = {"axis": axis} if axis is not None else {}
        return helper.make_node("DequantizeLinear", inputs, [f"{name}_f"], **options)

    nodes = [helper.make_node("QuantizeLinear", ["images", "s_in", "z_in"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "s_in", "z_in"], ["x"]),
             dequantize("w1", 0), dequantize("b1", 0), dequantize("w2", 0), dequantize("b2", 0),
             helper.make_node("Conv", ["x", "w1_f", "b1_f"], ["conv1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv1"], ["relu"]),
             helper.make_node("QuantizeLinear", ["relu", "s_c", "z_c"], ["relu_q"]),
             helper.make_node("DequantizeLinear", ["relu_q", "s_c", "z_c"], ["y"]),
             helper.make_node("Conv", ["y", "w2_f", "b2_f"], ["logits"], pads=[1, 0, 1, 0])]
    graph = helper.make_graph(
        nodes, "int8_conv", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 3, 24, 94])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 5, 24, 94])],
        [numpy_helper.from_array(value, name) for name, value in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    helper.set_model_props(model, {"alphabet": latin.name})
    onnx.save(model, path)


@pytest.mark.parametrize("in_zero_point", [0, 128])
def test_qdq_convolutions_become_integer_convolutions_with_the_same_values(tmp_path, latin, in_zero_point):
    write_int8_conv_onnx(tmp_path / "int8.onnx", latin, in_zero_point)
    imported = import_onnx(tmp_path / "int8.onnx")
    fake = [name for name in PIPELINES["graph"] if name != "qdq_conv_to_integer"]
    graphs = {"integer": apply_passes(imported, PIPELINES["graph"]),
              "fake": apply_passes(imported, fake)}
    convs = [line for line in graphs["integer"].script().splitlines() if "R.nn.conv2d(" in line]
    assert len(convs) == 2 and all('out_dtype="int32"' in line for line in convs)
    assert "R.dequantize" not in graphs["integer"].script()  # the weights' pairs went with the float convolutions
    layout = apply_passes(graphs["integer"], PIPELINES["layout"],
                                      layout="NHWC")
    # Each int8 kernel reads its weight packed in VNNI blocks, zero-padded to whole blocks: [O/16, KH, KW, I/4, 16, 4].
    packed = sorted(array.shape for array in main_constants(layout) if array.dtype == np.int8)
    assert packed == [(1, 3, 1, 2, 16, 4), (1, 3, 3, 1, 16, 4)]
    images = example_input(1, seed=5)
    modules = {**graphs, "layout": layout}
    outputs = {key: run(build(module, HOST), images) for key, module in modules.items()}
    np.testing.assert_allclose(outputs["layout"], outputs["integer"], atol=1e-5, rtol=0)
    # Exact integer sums against fp32 sums of the dequantized values: an activation between the two convolutions may
    # round a step (0.02) apart where the fp32 sum lands on a rounding boundary, nowhere more; bound: all 3 x 1 x 6
    # activations an output reads a step apart, times the largest weight (127 x 4e-3).
    step = 3 * 6 * 0.02 * 127 * 4e-3
    difference = np.abs(outputs["integer"] - outputs["fake"])
    assert difference.max() <= step and np.mean(difference > 1e-4) < 0.01
    assert np.ptp(outputs["integer"]) > 1



def test_the_profile_times_every_kernel_and_counts_the_models_convolution_macs(artifact, random_model, monkeypatch):
    from lprnet.runtime import profile
    from lprnet.runtime.metrics import count_macs
    from lprnet.runtime.profile import CONV, profile_artifact

    monkeypatch.setattr(profile, "MODEL_CALLS_PER_ROUND", 1)  # an untuned build: one call is tens of ms
    measured = profile_artifact(artifact, threads=1, rounds=1)
    convs = [kernel for kernel in measured.kernels if kernel.op == CONV]
    assert measured.runtime == "tvm" and convs and {kernel.precision for kernel in convs} == {"fp32"}
    assert sum(kernel.macs for kernel in convs) == count_macs(random_model)  # no channel padding in fp32 NHWC
    assert all(kernel.seconds > 0 for kernel in measured.kernels) and measured.model_p50_s > 0
