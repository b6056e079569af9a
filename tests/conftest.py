from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lprnet.model.alphabet import get_alphabet
from lprnet.model.network import LPRNet, LPRNetConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "lprnet-pretrained"
PUBLISHED_WEIGHTS = SHARED / "Final_LPRNet_model.pth"
PUBLISHED_IMAGES = SHARED / "images"
# The TVM target of tests that build whole models and time nothing: LLVM's opt-level 1 builds LPRNet about 2.5x
# faster than its default 3 and computes the same floats (no fast-math at either level).
TEST_LLVM_TARGET = {"kind": "llvm", "opt-level": 1}


def repo_params(section: str) -> dict:
    """The repository's params.yaml section as a dict: the one home of every default, for tests that build a params
    dataclass or write a params file of their own (override what the test is about, keep the rest)."""
    return dict(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))[section])


def params_from_repo(section: str, cls, **overrides):
    """`cls` (a params dataclass) from the repository's `section`, with `overrides`."""
    return cls(**{**repo_params(section), **overrides})


@pytest.fixture
def published_weights() -> Path:
    if not PUBLISHED_WEIGHTS.is_file():
        pytest.skip(f"{PUBLISHED_WEIGHTS} is absent")
    return PUBLISHED_WEIGHTS


@pytest.fixture
def published_images() -> Path:
    if not PUBLISHED_IMAGES.is_dir():
        pytest.skip(f"{PUBLISHED_IMAGES} is absent")
    return PUBLISHED_IMAGES


@pytest.fixture
def latin():
    return get_alphabet("latin")


def make_random_model(alphabet) -> LPRNet:
    """A randomly initialised model (seed 0) with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(0)
    model = LPRNet(LPRNetConfig(num_classes=alphabet.num_classes))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def random_model(latin) -> LPRNet:
    return make_random_model(latin)


@pytest.fixture
def images_and_labels(latin):
    from lprnet.model.synth import render_split

    return render_split(seed=3, split="test", count=24, symbols=latin.symbols)


def as_input(images: np.ndarray) -> torch.Tensor:
    from lprnet.model.data import to_network_input

    return torch.from_numpy(to_network_input(images))


def main_constants(mod) -> list[np.ndarray]:
    """The tensor constants a Relax module's main function passes to its kernels and operators."""
    from tvm import ir, relax

    arrays = []

    def visit(expr):
        if isinstance(expr, ir.expr.Constant) and isinstance(expr.ty, relax.TensorType):
            arrays.append(expr.value.numpy())

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return arrays


# `make test-fast` runs `pytest -m "not slow and not e2e"`; these are marked slow. Whole modules: TVM builds and
# MetaSchedule or RPC tuning, ONNX exports in most tests, stage scripts run in subprocesses. Single tests: those that
# took 5 s or more here (--durations), and every test on the published weights (the full-size model over the shared
# images: 50-200 s each). test_backends marks its TVM parameters itself; test_pipeline is e2e.
SLOW_MODULES = ("test_tune_tvm", "test_tune_rpc", "test_compile_tvm", "test_quantize_onnx", "test_onnx_export",
                "test_prune_stage")
SLOW_TESTS = (  # module::function, every parameter
    "test_calibrate_export_stages::test_the_calibrate_script_writes_both_runtimes_statistics",
    "test_calibrate_export_stages::test_the_steps_calibrate_quantize_and_export_with_onnx_runtime_ranges",
    "test_cli::test_eval_prints_the_common_metrics",
    "test_data_stage::test_calibration_and_test_splits_are_disjoint",
    "test_data_stage::test_empty_folder_and_bad_fractions_are_refused",
    "test_data_stage::test_other_sizes_are_resized_or_refused_per_params",
    "test_evaluate::test_batch_size_does_not_change_predictions",
    "test_gate::test_gate_against_head_in_a_git_repo",
    "test_model::test_batch_one_matches_the_original",
    "test_model::test_output_of_an_image_does_not_depend_on_its_batch",
    "test_prune::test_pruned_model_exports_to_onnx_and_matches_onnxruntime",
    "test_prune::test_pruning_shrinks_params_macs_and_file_and_round_trips",
    "test_qat::test_qat_fine_tunes_and_round_trips_through_the_int8_artifact",
    "test_quantize::test_a_pruned_layout_quantizes_and_round_trips",
    "test_quantize::test_int8_logits_close_to_fp32_on_a_random_model",
    "test_quantize::test_int8_predictions_do_not_depend_on_batch_size",
    "test_quantize::test_save_load_round_trip_gives_identical_logits",
    "test_train::test_a_fine_tuning_that_no_validation_prefers_returns_the_starting_weights",
    "test_train::test_distillation_moves_the_student_towards_the_teacher_without_reading_labels_or_batch_norm",
    "test_train::test_a_distillation_term_in_label_fine_tuning_moves_the_student_towards_the_teacher",
)
SLOW_FIXTURES = ("published_weights",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        function = getattr(item, "originalname", item.name)
        if (item.path.stem in SLOW_MODULES or f"{item.path.stem}::{function}" in SLOW_TESTS
                or any(name in item.fixturenames for name in SLOW_FIXTURES)):
            item.add_marker(pytest.mark.slow)
    # Longest first, so that the two pytest-xdist workers of `make test` (whole files each, --dist loadfile, in this
    # order with --no-loadscope-reorder; xdist's own order, by test count, started the end-to-end file a third of the
    # way through) end together: the end-to-end file (40 % of the suite's time), then files by their number of slow
    # tests, then the quick ones. A stable sort: the end-to-end tests share one repository and keep their file's order.
    slow_per_file = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: (0, 0) if item.get_closest_marker("e2e") else (1, -slow_per_file[item.path]))
