"""How a MetaSchedule budget is spent: trials per kernel (task) and per search round.

Pure arithmetic, no TVM: `plan_trials` shares a module's budget among its tasks, `module_share` gives the kernels a
database does not yet cover their share of a module's budget. Does not tune (see tune.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from lprnet.errors import InputError

logger = logging.getLogger(__name__)

MAX_TRIALS_PER_ITERATION = 64  # MetaSchedule's default batch of candidates per task and round


@dataclass(frozen=True)
class TrialPlan:
    total: int  # trials for this call: total_trials, or fewer if every task reaches trials_per_task first
    per_task: int
    per_iteration: int  # candidates a task gets each time the scheduler picks it


def plan_trials(num_tasks: int, total_trials: int, trials_per_task: int,
                trials_per_iteration: int = MAX_TRIALS_PER_ITERATION) -> TrialPlan:
    """How `total_trials` is shared among `num_tasks` tasks, none of which gets more than `trials_per_task`.

    The gradient-based scheduler first gives every task one batch of `per_iteration` candidates in turn, then spends
    the rest of the budget, a batch at a time, on the tasks whose best latency improves most. A batch is at most
    `trials_per_iteration` and at most total_trials // num_tasks, so that the first round reaches every task before
    the budget runs out. Each batch costs a round of evolutionary search, whatever its size, on top of building and
    timing each candidate: small batches spend more of the time searching (docs/tuning.md).
    """
    for name, value in (("total_trials", total_trials), ("trials_per_task", trials_per_task),
                        ("trials_per_iteration", trials_per_iteration)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if total_trials < num_tasks:
        raise InputError(f"total_trials={total_trials} is less than the {num_tasks} tasks to tune: every task needs "
                         f"at least one trial")
    per_iteration = min(trials_per_task, total_trials // num_tasks, trials_per_iteration)
    return TrialPlan(total=min(total_trials, num_tasks * trials_per_task), per_task=trials_per_task,
                     per_iteration=per_iteration)


def module_share(total_trials: int, num_tasks: int, num_todo: int) -> int:
    """The trials for `num_todo` of a module's `num_tasks` kernels when `total_trials` is the whole module's budget:
    kernels the database already has records for (e.g. the int8 module's pools and slices, which the fp32 module's
    tuning covered) count as tuned, and the rest get their share, so that every kernel gets about the same budget.
    Without it the int8 module's new kernels would get the whole module's budget, and its VNNI trials (tensorized
    during the search) cost more than fp32 ones."""
    return math.ceil(total_trials * num_todo / num_tasks)


