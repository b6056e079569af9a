"""Regression gate: the workspace's metrics/*.json against the same files at a git revision.

  python -m lprnet gate --against REV [--metrics DIR] [--params FILE] [--remeasure [--models DIR] [--artifacts A,B]]

Prints a Markdown table (one row per stage metrics file and per benchmarked artifact: accuracy, latency p50, size,
verdict) and one summary line, and exits 0 when nothing regressed, 1 when a row lost more plate accuracy than
`gate.max_accuracy_drop` or got slower beyond its measured timing noise, 2 on a usage error (unknown revision, no
metrics, unreadable file).

Latency noise comes from the spread of each side's timed samples: `latency_ms_mad` when the bench writes it, else
p90 - p50, both converted to a normal-equivalent standard deviation so that either side may use either key.
Files or keys present on one side only are reported, never failures; so is a file that is not flat on one side
(benchmark.json before its keys were flat), which is not compared.

Both sides are read by lprnet/pipeline/revision.py, the reader the report's deltas use too. Does not run any stage.

`--remeasure` judges latency instead by timing REV's artifacts (fetched through DVC) and the workspace's now,
interleaved in one process, on paired samples (lprnet/pipeline/remeasure.py): figures from two runs move by up to 2x
on a shared machine, so that is the verdict to trust. The metrics files still judge accuracy; their p50s are shown,
not judged.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from lprnet.errors import InputError, MissingFileError
from lprnet.pipeline.params import read_section
from lprnet.pipeline.revision import Metrics, metrics_at

OK, ACCURACY, LATENCY, NEW, REMOVED = "ok", "ACCURACY", "LATENCY", "new", "removed"

# Normal-equivalent standard deviation from the spread keys. Latency is right-skewed, so p90 - p50 (in the tail)
# overstates the spread of the bulk; that errs towards not failing on jitter, which is what the gate wants.
SIGMA_PER_P90_MINUS_P50 = 1 / NormalDist().inv_cdf(0.90)  # p90 - p50 = 1.2816 sigma
SIGMA_PER_MAD = 1 / NormalDist().inv_cdf(0.75)  # MAD = 0.6745 sigma

# Accuracies are counts over num_images, so 0.928 - 0.923 is 0.005000000000000004 in floating point: without
# slack a drop of exactly the allowed amount would fail.
FLOAT_SLACK = 1e-9


@dataclass(frozen=True)
class GateParams:
    """The `gate:` section of params.yaml (its defaults live there, with their meaning)."""

    max_accuracy_drop: float  # plate accuracy (a share, not percentage points) a row may lose
    latency_noise_factor: float  # a slowdown must exceed this many combined noise sigmas ...
    min_latency_slowdown: float  # ... and this share of the old p50, so that zero-noise metrics do not flake

    def __post_init__(self):
        for name in ("max_accuracy_drop", "latency_noise_factor", "min_latency_slowdown"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise InputError(f"gate.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class Row:
    """One artifact's comparison; `old` or `new` is None when the artifact exists on one side only."""

    artifact: str
    old: dict | None
    new: dict | None
    verdicts: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def regressed(self) -> bool:
        return ACCURACY in self.verdicts or LATENCY in self.verdicts


# ---------------------------------------------------------------------------------------------------- compare


def compare(old: dict[str, dict], new: dict[str, dict], thresholds: GateParams, latency: bool = True) -> list[Row]:
    """One Row per artifact in either mapping (artifact name -> flat metrics dict), sorted by name. Without
    `latency`, the p50s are shown but not judged (the re-measurement judges them)."""
    rows = []
    for artifact in sorted(old.keys() | new.keys()):
        before, after = old.get(artifact), new.get(artifact)
        if before is None:
            rows.append(Row(artifact, None, after, (NEW,)))
            continue
        if after is None:
            rows.append(Row(artifact, before, None, (REMOVED,)))
            continue
        notes = one_sided_keys(before, after)
        verdicts = []
        accuracy_failure = accuracy_regression(before, after, thresholds)
        if accuracy_failure:
            verdicts.append(ACCURACY)
            notes.append(accuracy_failure)
        latency_failure, latency_notes = latency_regression(before, after, thresholds) if latency else (None, [])
        notes.extend(latency_notes)
        if latency_failure:
            verdicts.append(LATENCY)
            notes.append(latency_failure)
        rows.append(Row(artifact, before, after, tuple(verdicts) or (OK,), tuple(notes)))
    return rows


def one_sided_keys(before: dict, after: dict) -> list[str]:
    notes = []
    if only_old := sorted(before.keys() - after.keys()):
        notes.append(f"only in old: {', '.join(only_old)}")
    if only_new := sorted(after.keys() - before.keys()):
        notes.append(f"only in new: {', '.join(only_new)}")
    return notes


def accuracy_regression(before: dict, after: dict, thresholds: GateParams) -> str | None:
    """Why the plate accuracy regressed, or None. The evaluation is deterministic on a fixed test split, so any
    drop is a real change in predictions: a fixed threshold, no noise model."""
    old, new = number(before, "accuracy"), number(after, "accuracy")
    if old is None or new is None:
        return None
    drop = old - new
    if drop > thresholds.max_accuracy_drop + FLOAT_SLACK:
        return f"accuracy fell by {drop:.4f}, more than the {thresholds.max_accuracy_drop:g} allowed"
    return None


def latency_regression(before: dict, after: dict, thresholds: GateParams) -> tuple[str | None, list[str]]:
    """(why the p50 latency regressed or None, notes on what limited the comparison)."""
    old_p50, new_p50 = number(before, "latency_ms_p50"), number(after, "latency_ms_p50")
    if old_p50 is None or new_p50 is None or old_p50 <= 0:
        return None, []
    old_threads, new_threads = before.get("threads"), after.get("threads")
    if old_threads is not None and new_threads is not None and old_threads != new_threads:
        return None, [f"threads {old_threads} -> {new_threads}: latency not gated (not comparable)"]
    notes = [f"no latency spread in {side}: only the {thresholds.min_latency_slowdown:.0%} floor applies"
             for side, metrics in (("old", before), ("new", after)) if latency_sigma_ms(metrics) is None]
    noise_ms, allowed_ms = latency_allowance_ms(before, after, thresholds)
    slowdown_ms = new_p50 - old_p50
    if slowdown_ms > allowed_ms:
        return (f"latency p50 +{slowdown_ms:.2f} ms (x{new_p50 / old_p50:.2f}), beyond "
                f"{thresholds.latency_noise_factor:g} x {noise_ms:.2f} ms noise and the "
                f"{thresholds.min_latency_slowdown:.0%} floor"), notes
    return None, notes


def latency_allowance_ms(before: dict, after: dict, thresholds: GateParams) -> tuple[float, float]:
    """(combined noise sigma, the p50 change in ms that still counts as noise) between two runs' metrics, which
    must both hold a positive `latency_ms_p50`."""
    # Independent runs: their spreads add in quadrature; a side without a spread adds none.
    noise_ms = math.hypot(latency_sigma_ms(before) or 0.0, latency_sigma_ms(after) or 0.0)
    return noise_ms, max(thresholds.latency_noise_factor * noise_ms,
                         thresholds.min_latency_slowdown * number(before, "latency_ms_p50"))


def latency_sigma_ms(metrics: dict) -> float | None:
    """Normal-equivalent spread of one run's batch-1 latency samples, or None when the metrics carry none.

    This is the spread of single samples, not the standard error of their median (about 8x smaller at 100
    runs): two runs of the same code on a shared machine differ by far more than the standard error, so the
    per-sample spread is the honest scale for run-to-run noise."""
    mad = number(metrics, "latency_ms_mad")
    if mad is not None:
        return max(mad, 0.0) * SIGMA_PER_MAD
    p50, p90 = number(metrics, "latency_ms_p50"), number(metrics, "latency_ms_p90")
    if p50 is None or p90 is None:
        return None
    return max(p90 - p50, 0.0) * SIGMA_PER_P90_MINUS_P50


def number(metrics: dict, key: str) -> float | None:
    """A finite numeric value, or None (absent, a string, a bool, NaN): such keys are shown, never gated."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# ----------------------------------------------------------------------------------------------------- render


def render(rows: list[Row], notes: Sequence[str] = ()) -> str:
    """A Markdown table, `notes` and the rows' notes as a bullet list (if any), and one summary line."""
    header = ["artifact", "accuracy old -> new (delta)", "latency p50 ms old -> new (ratio)", "size old -> new",
              "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        before, after = row.old or {}, row.new or {}
        cells = [row.artifact.replace("|", "\\|"),
                 change(number(before, "accuracy"), number(after, "accuracy"), "{:.4f}".format,
                        lambda old, new: f"{new - old:+.4f}"),
                 change(number(before, "latency_ms_p50"), number(after, "latency_ms_p50"), "{:.2f}".format,
                        lambda old, new: f"x{new / old:.2f}" if old > 0 else ""),
                 change(number(before, "size_bytes"), number(after, "size_bytes"), format_size),
                 ", ".join(row.verdicts)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {note}" for note in notes] + [f"- {row.artifact}: {note}" for row in rows for note in row.notes]
    if notes:
        lines += ["", *notes]
    lines += ["", summary(rows)]
    return "\n".join(lines)


def change(old: float | None, new: float | None, show: Callable[[float], str],
           describe: Callable[[float, float], str] | None = None) -> str:
    """'old -> new (how)', with 'n/a' for a missing side; '' when neither side has the key."""
    if old is None and new is None:
        return ""
    if old is None or new is None:
        return f"{'n/a' if old is None else show(old)} -> {'n/a' if new is None else show(new)}"
    how = describe(old, new) if describe else ""
    return f"{show(old)} -> {show(new)}" + (f" ({how})" if how else "")


def format_size(size_bytes: float) -> str:
    if size_bytes < 1024:
        return f"{size_bytes:.0f} B"
    if size_bytes < 1024**2:
        return f"{size_bytes / 1024:.1f} KiB"
    return f"{size_bytes / 1024**2:.2f} MiB"


def summary(rows: list[Row]) -> str:
    regressed = [f"{row.artifact} ({', '.join(v for v in row.verdicts if v in (ACCURACY, LATENCY))})"
                 for row in rows if row.regressed]
    added = sum(NEW in row.verdicts for row in rows)
    removed = sum(REMOVED in row.verdicts for row in rows)
    counts = f"{len(rows)} artifacts, {added} new, {removed} removed"
    if regressed:
        return f"**gate: FAIL**: {len(regressed)} regressed: {', '.join(regressed)}; {counts}."
    return f"**gate: ok**: no regression; {counts}."


# -------------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--against", required=True, metavar="REV",
                        help="git revision holding the reference metrics, e.g. origin/main or HEAD")
    parser.add_argument("--metrics", type=Path, default=Path("metrics"),
                        help="metrics folder, relative to the working directory (default: metrics)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="params file with the `gate:` section (and `bench:` for --remeasure; default: "
                             "params.yaml)")
    parser.add_argument("--remeasure", action="store_true",
                        help="judge latency by timing REV's artifacts (fetched through DVC) and the workspace's now, "
                             "interleaved in one process, instead of comparing the two runs' figures")
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="with --remeasure: the models folder, relative to the working directory (default: "
                             "models)")
    parser.add_argument("--artifacts", type=lambda text: [name for name in text.split(",") if name],
                        help="with --remeasure: comma-separated artifacts to time (default: every benchmarked "
                             "artifact and deploy)")
    parser.add_argument("--runs", type=int,
                        help="with --remeasure: samples per artifact and side, in rounds of 10 (default: "
                             "bench.runs); more rounds narrow the noise on a busy machine")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `gate` command to an argparse subparsers object (see lprnet/__main__.py)."""
    parser = subparsers.add_parser("gate", help="fail on accuracy or latency regressions against a git revision",
                                   description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def not_compared(old: Metrics, new: Metrics, rev: str) -> list[str]:
    """Notes on the files one side holds in a form the other cannot be compared with."""
    return [f"{stem}.json {where}: not flat (the format before flat metrics), not compared"
            for side, where in ((old, f"at {rev!r}"), (new, "in the workspace")) for stem in side.not_flat]


def run(args: argparse.Namespace) -> int:
    """Print the table (and with `--remeasure` the re-measured one); 0 when all ok, 1 on a regression, 2 on a usage
    error (one line on stderr)."""
    remeasuring = getattr(args, "remeasure", False)
    try:
        thresholds = read_section(args.params, "gate", GateParams)
        new = metrics_at(args.metrics)
        if not new.rows and not new.not_flat:
            raise MissingFileError(f"{args.metrics}: no *.json metrics in the workspace")
        old = metrics_at(args.metrics, args.against)
        if not old.rows and not old.not_flat:
            raise MissingFileError(f"{args.metrics}: no *.json metrics at revision {args.against!r}")
        if remeasuring:
            from lprnet.pipeline.remeasure import remeasure, render_paired
            from lprnet.runtime.bench import BenchConfig

            bench = read_section(args.params, "bench", BenchConfig)
            if getattr(args, "runs", None) is not None:
                if args.runs < 1:
                    raise InputError(f"--runs must be at least 1, got {args.runs}")
                bench = dataclasses.replace(bench, runs=args.runs)
            paired, paired_notes = remeasure(args.against, args.models, bench, thresholds.latency_noise_factor,
                                             thresholds.min_latency_slowdown, args.artifacts)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = compare(old.rows, new.rows, thresholds, latency=not remeasuring)
    notes = not_compared(old, new, args.against)
    if remeasuring:
        notes.append("latency p50s of the two runs' metrics shown, not judged: the re-measurement below judges it")
    print(render(rows, notes))
    if not remeasuring:
        return 1 if any(row.regressed for row in rows) else 0
    print()
    print(render_paired(paired, args.against, bench))
    if paired_notes:
        print("\n" + "\n".join(f"- {note}" for note in paired_notes))
    slower = [row.artifact for row in paired if row.regressed]
    print("\n" + (f"**re-measured: FAIL**: {len(slower)} slower: {', '.join(slower)}." if slower
                  else f"**re-measured: ok**: {len(paired)} artifacts, none slower beyond the noise."))
    return 1 if slower or any(row.regressed for row in rows) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lprnet.gate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
