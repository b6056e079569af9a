"""The regression gate's latency verdict from a re-measurement: REV's artifacts and the workspace's, timed in turns in
one process, judged on paired samples.

  python -m lprnet gate --against REV --remeasure [--artifacts NAME,...] [--models DIR]

Figures from two runs differ by up to 2x on a shared machine, so comparing the p50s two benchmark runs wrote says
little. Here both sides run now, side by side:

- Fetch: each artifact (a file or folder under models/, as pipeline/artifacts.py names them, and the delivered
  model's folder `deploy`) is copied as git and DVC hold it at REV, through `dvc.api.DVCFileSystem(rev=REV)`, which
  reads the local DVC cache and, for what is not there, the default remote. The workspace's side is read in place.
- Timing: rounds of runtime/bench.py's `interleaved_latency` (each predictor's turn: settling calls, then TURN_CALLS
  timed calls) with the `bench:` settings (threads, warm-up before the first round, runs / TURN_CALLS rounds, rounded
  up), on every predictor of both sides at once: round i of REV's artifact and of the workspace's falls in the same
  stretch of time, so drift of the machine (frequency, other processes) falls on both alike. A side's p50 is the
  median of its round medians.
- Decision: per round i, r_i = new round median / old round median; the slowdown estimate is their geometric mean,
  and its noise is the standard error of mean(log r_i), estimated by a seeded bootstrap over rounds (resampling
  whole rounds keeps each pair together and assumes no distribution). A row
  regresses when the estimate exceeds 1 + `gate.min_latency_slowdown` (a slowdown that matters) and log of it exceeds
  `gate.latency_noise_factor` standard errors (a slowdown the pairs show beyond their noise): the same two
  thresholds the figure comparison uses, here applied to the paired estimate instead of two runs' spreads. Why
  paired rounds and not all samples pooled: samples within a round are not independent (they share the machine's
  state at that moment), rounds are closer to it, and the ratio within a round cancels what the round shares.

Does not judge accuracy (gate.py compares the metrics files for that) and does not build anything.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lprnet.errors import InputError
from lprnet.pipeline.artifacts import ARTIFACTS
from lprnet.runtime.bench import TURN_CALLS, BenchConfig, interleaved_latency
from lprnet.runtime.predictor import Predictor, load_predictor

DEPLOY = "deploy"  # the delivered model's folder under models/, re-measured beside the benchmark's artifacts
BOOTSTRAP_RESAMPLES = 2000  # the standard error's own noise is about 1/sqrt(2 x 2000): under 2 %
BOOTSTRAP_SEED = 0  # the same samples give the same verdict
MIN_ROUNDS = 5  # fewer rounds give a standard error too noisy to judge on (bench.runs / TURN_CALLS of them)


def remeasurable_paths() -> dict[str, str]:
    """Every artifact the gate can re-measure: name -> its path under models/."""
    return {**{name: artifact.path for name, artifact in ARTIFACTS.items()}, DEPLOY: DEPLOY}


def choose(names: Iterable[str] | None) -> dict[str, str]:
    """The chosen artifacts (None: all of them) -> their paths; an unknown name is refused with the valid ones."""
    paths = remeasurable_paths()
    if names is None:
        return paths
    unknown = [name for name in names if name not in paths]
    if unknown:
        raise InputError(f"--artifacts: unknown {', '.join(unknown)}; valid: {', '.join(paths)}")
    return {name: paths[name] for name in names}


@dataclass(frozen=True)
class Paired:
    """One artifact's paired re-measurement: each side's p50 over all its samples, and the paired slowdown."""

    artifact: str
    old_p50_ms: float
    new_p50_ms: float
    ratio: float  # geometric mean over rounds of new / old round medians (old_p50_ms, new_p50_ms: their medians)
    sigma: float  # bootstrap standard error of mean(log ratio)
    rounds: int
    regressed: bool
    why: str


def paired_verdict(artifact: str, old_ms: list[float], new_ms: list[float], noise_factor: float,
                   min_slowdown: float) -> Paired:
    """The verdict on one artifact from its round medians on both sides (round i of both timed together); see the
    module docstring for the rule."""
    if len(old_ms) != len(new_ms) or len(old_ms) < MIN_ROUNDS:
        raise InputError(f"{artifact}: {len(old_ms)} and {len(new_ms)} rounds; a paired verdict needs at least "
                         f"{MIN_ROUNDS} on both sides (bench.runs or --runs of at least {MIN_ROUNDS * TURN_CALLS})")
    logs = np.log(np.asarray(new_ms) / np.asarray(old_ms))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = logs[rng.integers(0, len(logs), size=(BOOTSTRAP_RESAMPLES, len(logs)))].mean(axis=1)
    sigma = float(means.std(ddof=1))
    estimate = float(logs.mean())
    ratio = float(np.exp(estimate))
    large = ratio > 1 + min_slowdown
    beyond_noise = estimate > noise_factor * sigma
    why = (f"x{ratio:.3f} paired over {len(logs)} rounds, "
           f"{'beyond' if beyond_noise else 'within'} {noise_factor:g} x its noise "
           f"(x{np.exp(estimate - noise_factor * sigma):.3f}-x{np.exp(estimate + noise_factor * sigma):.3f}), "
           f"{'above' if large else 'within'} the {min_slowdown:.0%} floor")
    return Paired(artifact, float(np.median(old_ms)), float(np.median(new_ms)), ratio, sigma, len(logs),
                  large and beyond_noise, why)


def round_medians(predictors: dict, bench: BenchConfig) -> dict[object, list[float]]:
    """Each predictor's median in ms of every round of `interleaved_latency` (TURN_CALLS calls per turn), warm-up
    before the first round only."""
    medians: dict[object, list[float]] = {name: [] for name in predictors}
    for index in range(-(-bench.runs // TURN_CALLS)):
        config = dataclasses.replace(bench, runs=TURN_CALLS, warmup=bench.warmup if index == 0 else 0)
        for name, summary in interleaved_latency(predictors, config).items():
            medians[name].append(summary["latency_ms_p50"])
    return medians


def remeasure_pairs(pairs: dict[str, tuple[Predictor, Predictor]], bench: BenchConfig, noise_factor: float,
                    min_slowdown: float) -> list[Paired]:
    """Time every (old, new) predictor pair in one interleaved run and judge each pair."""
    predictors = {(name, side): predictor for name, pair in pairs.items() for side, predictor in zip("on", pair)}
    medians = round_medians(predictors, bench)
    return [paired_verdict(name, medians[name, "o"], medians[name, "n"], noise_factor, min_slowdown)
            for name in pairs]


@contextmanager
def fetched_at(rev: str, models: str | os.PathLike, paths: dict[str, str]):
    """Yield (name -> local copy of that artifact as of `rev`, notes on artifacts absent at `rev`), the copies in a
    temporary folder removed afterwards. Raises RevisionError for an unreadable revision."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.scm import RevError

    from lprnet.pipeline.revision import RevisionError, in_repository

    with tempfile.TemporaryDirectory(prefix="gate-remeasure.") as work:
        fs = dvc.api.DVCFileSystem(rev=rev)
        try:
            inside = in_repository(Path(models), Path(fs.repo.scm.root_dir))
            copies, notes = {}, []
            for name, path in paths.items():
                remote_path = f"{inside}/{path}" if inside else path
                if not fs.exists(remote_path):
                    notes.append(f"{name}: no {remote_path} at {rev!r}, not re-measured")
                    continue
                local = Path(work) / name / Path(path).name
                local.parent.mkdir(parents=True)
                fs.get(remote_path, str(local), recursive=fs.isdir(remote_path))
                copies[name] = local
        except RevError:
            raise RevisionError(f"unknown revision {rev!r}") from None
        except DvcException as error:
            raise RevisionError(f"cannot fetch artifacts at revision {rev!r}: {error}") from None
        finally:
            fs.close()
        yield copies, notes


def remeasure(rev: str, models: str | os.PathLike, bench: BenchConfig, noise_factor: float, min_slowdown: float,
              names: Iterable[str] | None = None) -> tuple[list[Paired], list[str]]:
    """(the paired verdicts of the chosen artifacts present on both sides, notes on those left out)."""
    paths = choose(names)
    notes = [f"{name}: no {Path(models) / path} in the workspace, not re-measured"
             for name, path in paths.items() if not (Path(models) / path).exists()]
    paths = {name: path for name, path in paths.items() if (Path(models) / path).exists()}
    with fetched_at(rev, models, paths) as (copies, absent):
        pairs = {name: (load_predictor(copy, bench.threads), load_predictor(Path(models) / paths[name], bench.threads))
                 for name, copy in copies.items()}
        return (remeasure_pairs(pairs, bench, noise_factor, min_slowdown) if pairs else []), notes + absent


def render_paired(rows: list[Paired], rev: str, bench: BenchConfig) -> str:
    """A Markdown table of the re-measurement, and what it was."""
    lines = [f"Re-measured now, {rev!r} against the workspace, interleaved in one process: batch 1, "
             f"{bench.threads} threads, {-(-bench.runs // TURN_CALLS)} rounds of {TURN_CALLS} calls per side, after "
             f"{bench.warmup} warm-up calls.", "",
             "| artifact | p50 ms at REV | p50 ms now | paired ratio | verdict |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.artifact} | {row.old_p50_ms:.3f} | {row.new_p50_ms:.3f} | x{row.ratio:.3f} | "
                     f"{'LATENCY' if row.regressed else 'ok'}: {row.why} |")
    return "\n".join(lines)
