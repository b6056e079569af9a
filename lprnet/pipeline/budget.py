"""The accuracy budget: the `budget` section of params.yaml, checked, and the one rule that applies it.

The budget is the plate accuracy the delivered model may lose against the baseline, as an absolute share (0.005 is
half a percentage point), measured on the validation split (the `calib` split of data/prepared: never the test
split, which only verifies the model chosen). Optional goals: a batch-1 p50 latency the delivered model must reach
and a size it must not exceed. `latency_tie` says when two latencies count as equal: on this shared machine the p50
ratio of two artifacts moves by several per cent between benchmarks of the same bytes, so "the fastest" alone
would let that noise pick between a float and an int8 model. Does not measure or choose anything (see
select_step.py).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from lprnet.errors import InputError

# The split every decision taken against the budget reads (data/prepared/<VALIDATION_SPLIT>.npz).
VALIDATION_SPLIT = "calib"


def _optional_positive(value, key: str):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value > 0 and math.isfinite(value)):
        raise InputError(f"budget.{key} must be a positive number of {key.rsplit('_', 1)[1]} or null (no goal), "
                         f"got {value!r}")


@dataclass(frozen=True)
class BudgetParams:
    """The `budget:` section of params.yaml (each key's meaning is there, beside its value)."""

    max_accuracy_drop: float  # validation plate accuracy the delivered model may lose against the baseline, [0, 1]
    max_latency_ms: float | None  # None: no latency goal
    max_size_mb: float | None  # None: no size goal
    prune_share: float  # the share of max_accuracy_drop that `prune.ratio: auto` may spend, (0, 1]; int8 the rest
    latency_tie: float  # p50s within this share above the fastest within budget count as equal, [0, 1)

    def __post_init__(self):
        drop = self.max_accuracy_drop
        if isinstance(drop, bool) or not isinstance(drop, numbers.Real) or not 0 <= drop <= 1:  # also refuses NaN
            raise InputError(f"budget.max_accuracy_drop must be a share of plates in [0, 1] (0.005: half a "
                             f"point), got {drop!r}")
        share = self.prune_share
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 < share <= 1:
            raise InputError(f"budget.prune_share must be a share of the budget in (0, 1], got {share!r}")
        tie = self.latency_tie
        if isinstance(tie, bool) or not isinstance(tie, numbers.Real) or not 0 <= tie < 1:
            raise InputError(f"budget.latency_tie must be a share of the fastest p50 in [0, 1) (0: no ties), got "
                             f"{tie!r}")
        _optional_positive(self.max_latency_ms, "max_latency_ms")
        _optional_positive(self.max_size_mb, "max_size_mb")

    def accuracy_floor(self, baseline_accuracy: float) -> float:
        """The lowest validation accuracy within budget, for a baseline at `baseline_accuracy`."""
        return baseline_accuracy - self.max_accuracy_drop

    def keeps_accuracy(self, accuracy: float, baseline_accuracy: float) -> bool:
        return keeps_floor(accuracy, self.accuracy_floor(baseline_accuracy))

    def prune_floor(self, baseline_accuracy: float) -> float:
        """The lowest validation accuracy a pruned model may keep: the baseline's less `prune_share` of the budget."""
        return baseline_accuracy - self.prune_share * self.max_accuracy_drop

    def keeps_prune_share(self, accuracy: float, baseline_accuracy: float) -> bool:
        return keeps_floor(accuracy, self.prune_floor(baseline_accuracy))

    def int8_floor(self, baseline_accuracy: float, source_accuracy: float) -> float:
        """The lowest validation accuracy the int8 model of a float model at `source_accuracy` may keep: what pruning
        left of the budget, and at least the rest of the budget (1 - prune_share) below its source when pruning
        already spent more."""
        return min(self.accuracy_floor(baseline_accuracy),
                   source_accuracy - (1 - self.prune_share) * self.max_accuracy_drop)

    def keeps_int8_share(self, accuracy: float, baseline_accuracy: float, source_accuracy: float) -> bool:
        return keeps_floor(accuracy, self.int8_floor(baseline_accuracy, source_accuracy))


def keeps_floor(accuracy: float, floor: float) -> bool:
    """Whether `accuracy` is at least `floor`, up to floating-point rounding."""
    # A tolerance of one part in a billion: 0.98 - 0.005 is 0.975000...01 in floating point.
    return accuracy >= floor - 1e-9
