"""The quantize stage's fallback to the accuracy budget: the int8 floor, the sensitivity ranking and the stop."""

from __future__ import annotations

import onnx
import pytest

from lprnet.optimize.calibrate import calibrate, int8_layers
from lprnet.pipeline.budget import BudgetParams
from lprnet.pipeline.quantize_step import (
    BACK_TO_INT8,
    FALLBACK_COLUMNS,
    STAYS_FLOAT,
    ValidationScorer,
    fallback_to_floor,
    float_macs_share,
)
from lprnet.runtime.bench import BenchConfig
from tests.conftest import repo_params


def budget(drop: float = 0.01, prune_share: float = 0.5) -> BudgetParams:
    return BudgetParams(max_accuracy_drop=drop, max_latency_ms=None, max_size_mb=None, prune_share=prune_share,
                        latency_tie=0.1)


def test_int8_may_spend_what_pruning_left_and_at_least_its_share():
    # Pruning lost nothing: int8 may use the whole budget.
    assert budget().int8_floor(0.90, 0.90) == pytest.approx(0.89)
    # Pruning used its half: int8 gets the other half.
    assert budget().int8_floor(0.90, 0.895) == pytest.approx(0.89)
    # Pruning already overspent: int8 still gets its share below its source, no more.
    assert budget().int8_floor(0.90, 0.85) == pytest.approx(0.845)
    assert budget(prune_share=1.0).int8_floor(0.90, 0.85) == pytest.approx(0.85)


class FakeScorer:
    """int8 models whose validation accuracy and logit error follow set per-layer effects. `qdq_loss`: how much
    less the QDQ graph of a split reads than PyTorch, per split (the deployed rounding)."""

    def __init__(self, model, gains: dict[str, float], start: float, errors: dict[str, float],
                 qdq_loss: dict[tuple[str, ...], float] | None = None):
        self.model, self.gains, self.start, self.errors = model, gains, start, errors
        self.qdq_loss = qdq_loss or {}
        self.built: list[tuple[str, ...]] = []

    def error(self, float_layers):
        return 1.0 - sum(self.errors.get(layer, 0.0) for layer in float_layers)

    def int8(self, float_layers):
        self.built.append(tuple(float_layers))
        torch_accuracy = self.start + sum(self.gains.get(layer, 0.0) for layer in float_layers)
        qdq_accuracy = torch_accuracy - self.qdq_loss.get(tuple(sorted(float_layers)), 0.0)
        return None, {"val_accuracy_torch": torch_accuracy, "val_accuracy_qdq": qdq_accuracy,
                      "val_accuracy": min(torch_accuracy, qdq_accuracy)}


def run(scorer, floor, enabled=True):
    return fallback_to_floor(scorer, floor, enabled, report=lambda items, _: items)


def test_a_model_that_keeps_its_floor_stays_all_int8(random_model):
    scorer = FakeScorer(random_model, {}, start=0.9, errors={})
    _, float_layers, accuracy, steps = run(scorer, floor=0.9)
    assert float_layers == () and accuracy == 0.9 and scorer.built == [()]
    assert [step["verdict"] for step in steps] == ["keeps the floor"] and set(steps[0]) == set(FALLBACK_COLUMNS)


def test_the_most_sensitive_layers_go_float_first_until_the_floor_is_kept(random_model):
    layers = list(int8_layers(random_model))
    # The ranking reads the logit error each layer removes; accuracy comes back only with the two most sensitive.
    errors = {layers[5]: 0.3, layers[2]: 0.2, layers[9]: 0.1}
    gains = {layers[5]: 0.004, layers[2]: 0.004}
    scorer = FakeScorer(random_model, gains, start=0.89, errors=errors)
    _, float_layers, accuracy, steps = run(scorer, floor=0.897)
    assert float_layers == (layers[5], layers[2]) and accuracy == pytest.approx(0.898)
    assert [step["float_layer"] for step in steps] == ["", layers[5], layers[2], layers[5]]
    assert [step["verdict"] for step in steps] == ["below the floor"] * 2 + ["keeps the floor", STAYS_FLOAT]
    assert steps[1]["logit_mse_removed"] == pytest.approx(0.3)
    shares = [step["float_macs_share"] for step in steps]
    assert 0 < shares[0] < shares[1] < shares[2] < 1  # the context's convs are float from the start
    assert shares[3] < shares[2]  # the split tried without layers[5]
    # The splits: all int8, then one per step, then layers[2] alone (layers[5] tried back in int8).
    assert scorer.built == [(), (layers[5],), (layers[5], layers[2]), (layers[2],)]


def test_layers_the_floor_does_not_need_go_back_to_int8(random_model):
    """The ranking puts layers[5] and layers[2] first, but only layers[9] brings the plates back: the backward pass
    returns the two that were not needed, least sensitive first."""
    layers = list(int8_layers(random_model))
    errors = {layers[5]: 0.3, layers[2]: 0.2, layers[9]: 0.1}
    scorer = FakeScorer(random_model, {layers[9]: 0.01}, start=0.89, errors=errors)
    _, float_layers, accuracy, steps = run(scorer, floor=0.897)
    assert float_layers == (layers[9],) and accuracy == pytest.approx(0.9)
    assert [step["float_layer"] for step in steps[4:]] == [layers[2], layers[5]]
    assert [step["verdict"] for step in steps[4:]] == [BACK_TO_INT8] * 2
    assert steps[-1]["float_macs_share"] == pytest.approx(float_macs_share(random_model, (layers[9],)))


def test_a_split_keeps_the_floor_only_when_its_qdq_graph_does_too(random_model):
    """PyTorch int8 reaches the floor with layers[5] float, but its QDQ graph (what ONNX Runtime and TVM run) reads
    a plate less there: the fallback goes on to layers[2], and keeps layers[5] float in the backward pass."""
    layers = list(int8_layers(random_model))
    errors = {layers[5]: 0.3, layers[2]: 0.2}
    gains = {layers[5]: 0.01, layers[2]: 0.01}
    qdq_loss = {tuple(sorted((layers[5],))): 0.01, tuple(sorted((layers[2],))): 0.01}
    scorer = FakeScorer(random_model, gains, start=0.89, errors=errors, qdq_loss=qdq_loss)
    _, float_layers, accuracy, steps = run(scorer, floor=0.9)
    assert float_layers == (layers[5], layers[2]) and accuracy == pytest.approx(0.91)
    assert steps[1]["val_accuracy_torch"] == pytest.approx(0.9) and steps[1]["verdict"] == "below the floor"
    assert steps[-1]["verdict"] == STAYS_FLOAT


def test_no_fallback_when_it_is_switched_off_or_nothing_helps(random_model):
    scorer = FakeScorer(random_model, {}, start=0.5, errors={})
    _, float_layers, _, steps = run(scorer, floor=0.9, enabled=False)
    assert float_layers == () and len(steps) == 1 and steps[0]["verdict"] == "below the floor"
    # Nothing brings accuracy back: every layer ends up float, nothing is tried back, and the verdict says it missed.
    _, float_layers, _, steps = run(scorer, floor=0.9)
    assert set(float_layers) == set(int8_layers(random_model)) and steps[-1]["verdict"] == "below the floor"
    assert steps[-1]["float_macs_share"] == pytest.approx(1.0)
    assert len(steps) == 1 + len(float_layers)


@pytest.mark.parametrize("with_qdq", [True, False])
def test_the_scorer_reads_the_lower_of_pytorch_and_its_qdq_graph(random_model, latin, images_and_labels, tmp_path,
                                                                monkeypatch, with_qdq):
    images, labels = images_and_labels
    statistics = calibrate(random_model, images, repo_params("calibrate")["method"])
    bench = BenchConfig(**repo_params("bench"))
    scorer = ValidationScorer(random_model, statistics, (images, labels), latin, bench,
                              tmp_path if with_qdq else None)
    readings = iter([0.75, 0.5])  # a random model reads no plate: PyTorch first, then the QDQ graph
    monkeypatch.setattr(scorer, "accuracy", lambda logits: next(readings))
    _, scores = scorer.int8(())
    if with_qdq:
        assert scores == {"val_accuracy_torch": 0.75, "val_accuracy_qdq": 0.5, "val_accuracy": 0.5}
        graph = onnx.load(str(tmp_path / "int8.onnx")).graph
        assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    else:
        assert scores == {"val_accuracy_torch": 0.75, "val_accuracy_qdq": "", "val_accuracy": 0.75}
        assert not any(tmp_path.iterdir())
