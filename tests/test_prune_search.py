"""`prune.ratio: auto` (lprnet/pipeline/prune_step.search_ratio) with fine-tuning replaced by a table of validation
accuracies per ratio: the bisection keeps the largest ratio within the budget's share, tries about log2 of the
ratios, and falls back to the losslessly pruned model when none keeps it. The stage end to end:
tests/test_prune_stage.py."""

from __future__ import annotations

import pytest

from lprnet.pipeline import prune_step
from lprnet.pipeline.budget import BudgetParams
from lprnet.pipeline.prune_step import PruneParams
from tests.conftest import params_from_repo

RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
BASELINE = 0.98  # the lossless model's validation accuracy in these tests


@pytest.fixture
def search(monkeypatch, random_model, latin):
    """Run search_ratio with validation accuracy `table[ratio]` for each pruned model; returns (ratio, rows, the
    ratios fine-tuned in order)."""
    def run(table: dict[float, float], share: float = 0.5, drop: float = 0.005):
        tuned = []

        def prune_and_finetune(lossless, ratio, params, train, validation, alphabet, threads, new_run):
            tuned.append(ratio)
            return lossless, {"finetune_val_accuracy_start": 0.0, "finetune_val_accuracy": table[ratio],
                              "finetune_kept_step": 1}

        monkeypatch.setattr(prune_step, "prune_and_finetune", prune_and_finetune)
        monkeypatch.setattr(prune_step, "evaluate", lambda predictor, images, labels: {"accuracy": BASELINE})
        params = params_from_repo("prune", PruneParams, ratio="auto", auto_ratios=RATIOS)
        budget = params_from_repo("budget", BudgetParams, prune_share=share, max_accuracy_drop=drop)
        ratio, model, finetuning, rows = prune_step.search_ratio(random_model, params, budget, None, (None, None),
                                                                 latin, 1)
        return ratio, rows, tuned
    return run


@pytest.mark.parametrize("last_kept", range(-1, len(RATIOS)))
def test_the_largest_ratio_within_the_share_is_kept(search, last_kept):
    # Accuracy falls with the ratio: 97.9 % (0.1 point lost) down to a ratio, then 97 % (1 point).
    table = {ratio: 0.979 if i <= last_kept else 0.97 for i, ratio in enumerate(RATIOS)}
    ratio, rows, tuned = search(table)
    assert ratio == (RATIOS[last_kept] if last_kept >= 0 else 0.0)
    assert len(tuned) == len(set(tuned)) <= 3  # bisection over 6 ratios: at most 3 fine-tunings
    assert [row["ratio"] for row in rows] == tuned
    assert all(row["val_accuracy_floor"] == pytest.approx(0.9775) for row in rows)
    for row in rows:
        assert row["verdict"] == ("kept: within the budget's share" if row["val_accuracy"] >= 0.9775
                                  else "rejected: below the floor")


def test_the_share_of_the_budget_sets_the_floor(search):
    table = dict(zip(RATIOS, [0.978, 0.977, 0.976, 0.974, 0.972, 0.97]))
    assert search(table, share=0.5)[0] == 0.1  # floor 97.75 %
    assert search(table, share=1.0)[0] == 0.3  # floor 97.5 %
    assert search(table, share=1.0, drop=0.02)[0] == 0.6  # floor 96 %
