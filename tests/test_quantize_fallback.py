"""The quantize stage's fallback to the accuracy budget: the int8 floor, the sensitivity ranking and the stop."""

from __future__ import annotations

import pytest

from lprnet.optimize.calibrate import int8_layers
from lprnet.pipeline.budget import BudgetParams
from lprnet.pipeline.quantize_step import FALLBACK_COLUMNS, fallback_to_floor


def budget(drop: float = 0.01, prune_share: float = 0.5) -> BudgetParams:
    return BudgetParams(max_accuracy_drop=drop, max_latency_ms=None, max_size_mb=None, prune_share=prune_share)


def test_int8_may_spend_what_pruning_left_and_at_least_its_share():
    # Pruning lost nothing: int8 may use the whole budget.
    assert budget().int8_floor(0.90, 0.90) == pytest.approx(0.89)
    # Pruning used its half: int8 gets the other half.
    assert budget().int8_floor(0.90, 0.895) == pytest.approx(0.89)
    # Pruning already overspent: int8 still gets its share below its source, no more.
    assert budget().int8_floor(0.90, 0.85) == pytest.approx(0.845)
    assert budget(prune_share=1.0).int8_floor(0.90, 0.85) == pytest.approx(0.85)


class FakeScorer:
    """int8 models whose validation accuracy and logit error follow set per-layer effects."""

    def __init__(self, model, gains: dict[str, float], start: float, errors: dict[str, float]):
        self.model, self.gains, self.start, self.errors = model, gains, start, errors
        self.built: list[tuple[str, ...]] = []

    def int8(self, float_layers):
        self.built.append(tuple(float_layers))
        accuracy = self.start + sum(self.gains.get(layer, 0.0) for layer in float_layers)
        error = 1.0 - sum(self.errors.get(layer, 0.0) for layer in float_layers)
        return None, accuracy, error


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
    assert [step["float_layer"] for step in steps] == ["", layers[5], layers[2]]
    assert [step["verdict"] for step in steps] == ["below the floor"] * 2 + ["keeps the floor"]
    assert steps[1]["logit_mse_removed"] == pytest.approx(0.3)
    shares = [step["float_macs_share"] for step in steps]
    assert 0 < shares[0] < shares[1] < shares[2] < 1  # the context's convs are float from the start
    # One model per layer to rank, then one per step.
    assert len(scorer.built) == 1 + len(layers) + 2


def test_no_fallback_when_it_is_switched_off_or_nothing_helps(random_model):
    scorer = FakeScorer(random_model, {}, start=0.5, errors={})
    _, float_layers, _, steps = run(scorer, floor=0.9, enabled=False)
    assert float_layers == () and len(steps) == 1 and steps[0]["verdict"] == "below the floor"
    # Nothing brings accuracy back: every layer ends up float and the verdict says it missed.
    _, float_layers, _, steps = run(scorer, floor=0.9)
    assert set(float_layers) == set(int8_layers(random_model)) and steps[-1]["verdict"] == "below the floor"
    assert steps[-1]["float_macs_share"] == pytest.approx(1.0)
