"""The select stage's work: the one model to ship, the fastest within the accuracy budget, written to models/deploy.

Candidates are every artifact the benchmark stage timed (pipeline/artifacts.py: ARTIFACTS, and ONNX Runtime fp32 on
the unpruned baseline), walked from the lowest batch-1 p50 of that benchmark up. Each is scored on the validation
split (budget.VALIDATION_SPLIT) until one keeps the budget's accuracy against the baseline's on the same split (and
fits `max_size_mb`). The candidates up to `budget.latency_tie` slower than that one are scored too, since they are
as fast within this machine's noise, and the most accurate of them is delivered; slower ones are not scored, since
none of them could be chosen.
Only then is the test split read, to verify the delivered model as it was written and, beside it, the baseline and
ONNX Runtime fp32 on the baseline (the reference of every speed ratio, which the report places among the artifacts
by that accuracy), so no decision depends on the test split (tests/test_select.py gives test accuracies that would
favour another artifact).

The folder gets the artifact in its runtime's own format and a manifest (lprnet/runtime/deploy.py). A latency goal
no candidate within the accuracy budget reaches, or a size goal none fits, stops the stage with an error that names
the key and the closest artifact: it never delivers something outside the budget silently. Does not time anything
(the benchmark stage does) and does not train, quantize or compile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lprnet.errors import InputError
from lprnet.io import atomic_dir, sha256_file, write_json_atomic
from lprnet.model.data import load_prepared
from lprnet.pipeline.artifacts import ARTIFACTS, BASELINE, REFERENCE, REFERENCE_LABEL, artifact_paths, split_benchmark
from lprnet.pipeline.budget import VALIDATION_SPLIT, BudgetParams
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.deploy import ARTIFACT_NAMES, DEPLOY_FILE, DEPLOY_FORMAT, input_spec, output_spec
from lprnet.runtime.evaluate import evaluate
from lprnet.runtime.metrics import artifact_size
from lprnet.runtime.predictor import load_predictor

# reports/select.csv, one line per candidate the selection looked at, fastest first.
CSV_COLUMNS = ("artifact", "latency_ms_p50", "size_mb", "val_accuracy", "verdict")


@dataclass(frozen=True)
class Candidate:
    name: str  # its benchmark name (artifacts.ARTIFACTS key, or artifacts.REFERENCE)
    label: str
    latency_ms_p50: float
    size_bytes: int


def choose(candidates: list[Candidate], validation_accuracy: Callable[[Candidate], float],
           baseline_accuracy: float, budget: BudgetParams) -> tuple[Candidate | None, list[dict]]:
    """The candidate to deliver, or None; and one row per candidate looked at, fastest first, with its verdict.

    The fastest candidate within `budget` (validation accuracy against `baseline_accuracy`, and the size goal) sets
    the pace; every candidate whose p50 is at most `budget.latency_tie` above it (and within the latency goal) counts
    as equally fast, and the most accurate of those on validation is delivered (the faster on equal accuracy).
    `validation_accuracy` is called only for candidates that fit the size goal and are not slower than that."""
    log, within = [], []  # within: (candidate, its row) inside the budget, fastest first
    for candidate in sorted(candidates, key=lambda c: c.latency_ms_p50):
        if within:
            pace = within[0][0].latency_ms_p50 * (1 + budget.latency_tie)
            if candidate.latency_ms_p50 > pace or (budget.max_latency_ms is not None
                                                   and candidate.latency_ms_p50 > budget.max_latency_ms):
                break
        row = {"artifact": candidate.name, "latency_ms_p50": candidate.latency_ms_p50,
               "size_mb": candidate.size_bytes / 1e6, "val_accuracy": None}
        log.append(row)
        if budget.max_size_mb is not None and candidate.size_bytes / 1e6 > budget.max_size_mb:
            row["verdict"] = "larger than budget.max_size_mb"
            continue
        row["val_accuracy"] = validation_accuracy(candidate)
        if budget.keeps_accuracy(row["val_accuracy"], baseline_accuracy):
            within.append((candidate, row))
        else:
            row["verdict"] = "below the accuracy budget"
    if not within:
        return None, log
    chosen, chosen_row = max(within, key=lambda pair: pair[1]["val_accuracy"])  # max keeps the first of equals
    for candidate, row in within:
        row["verdict"] = "delivered" if candidate is chosen else (
            f"within budget, as fast as {chosen.name} (budget.latency_tie), less accurate"
            if row["val_accuracy"] < chosen_row["val_accuracy"] else
            f"within budget, as accurate as {chosen.name}, slower")
    return chosen, log


def check_goals(chosen: Candidate | None, log: list[dict], budget: BudgetParams, baseline_accuracy: float) -> None:
    """Raise InputError naming the goal and the closest candidate when `chosen` misses a goal (or is None)."""
    floor = f"{budget.accuracy_floor(baseline_accuracy):.2%}"
    if chosen is None:
        evaluated = [row for row in log if row["val_accuracy"] is not None]
        closest = max(evaluated, key=lambda row: row["val_accuracy"]) if evaluated else min(
            log, key=lambda row: row["size_mb"])
        raise InputError(
            f"budget.max_size_mb {budget.max_size_mb:g}: no artifact of at most that size keeps validation accuracy "
            f">= {floor} (budget.max_accuracy_drop {budget.max_accuracy_drop:g}); the closest is {closest['artifact']} "
            f"({closest['size_mb']:.3f} MB, validation accuracy "
            + (f"{closest['val_accuracy']:.2%})" if closest["val_accuracy"] is not None else "not scored)"))
    if budget.max_latency_ms is not None and chosen.latency_ms_p50 > budget.max_latency_ms:
        raise InputError(
            f"budget.max_latency_ms {budget.max_latency_ms:g}: the fastest artifact within the accuracy budget, "
            f"{chosen.name}, is the closest at {chosen.latency_ms_p50:.3f} ms (p50, batch 1); raise the goal or "
            "budget.max_accuracy_drop")


def sha256_path(path: Path) -> str:
    """SHA-256 of a file (as the TVM manifest records its library's), or of a folder: of its files' relative paths and
    SHA-256s, in sorted order."""
    if not path.is_dir():
        return sha256_file(path)
    listing = "".join(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n"
                      for file in sorted(p for p in path.rglob("*") if p.is_file()))
    return hashlib.sha256(listing.encode()).hexdigest()


def select_stage(models: str | os.PathLike, data: str | os.PathLike, benchmark: dict, out: str | os.PathLike,
                 budget: BudgetParams, bench: BenchConfig) -> tuple[dict, list[dict]]:
    """Choose from the artifacts under `models` timed in `benchmark` (benchmark.json's content), write the deploy
    folder `out`; returns the metrics and the candidates' log (CSV_COLUMNS)."""
    models = Path(models)
    timings = split_benchmark(benchmark)[1]
    needed = ("latency_ms_p50", "ratio_vs_baseline", "ratio_vs_ort_fp32_baseline")
    missing = [name for name in (*ARTIFACTS, REFERENCE) if not set(needed) <= set(timings.get(name, {}))]
    if missing:
        raise InputError(f"benchmark metrics: no {' / '.join(needed)} of {', '.join(missing)} (run `dvc repro "
                         "benchmark`)")
    paths = artifact_paths(models)
    validation = load_prepared(data, VALIDATION_SPLIT)
    labels = {**{name: artifact.label for name, artifact in ARTIFACTS.items()}, REFERENCE: REFERENCE_LABEL}
    candidates = [Candidate(name, labels[name], timings[name]["latency_ms_p50"], artifact_size(paths[name]))
                  for name in paths]

    loaded, scores = {}, {}  # candidate name -> its predictor, its validation accuracy

    def predictor(name: str):
        if name not in loaded:
            loaded[name] = load_predictor(paths[name], bench.threads)
        return loaded[name]

    def validation_accuracy(candidate: Candidate) -> float:
        if candidate.name not in scores:
            scores[candidate.name] = evaluate(predictor(candidate.name), *validation, bench.eval_batch)["accuracy"]
        return scores[candidate.name]

    baseline = next(c for c in candidates if c.name == BASELINE)
    baseline_val = validation_accuracy(baseline)
    chosen, log = choose(candidates, validation_accuracy, baseline_val, budget)
    check_goals(chosen, log, budget, baseline_val)
    chosen_val = scores[chosen.name]

    # The decision is taken: the test split verifies the delivered model, as written, against the baseline.
    test = load_prepared(data, "test")
    baseline_test = evaluate(predictor(BASELINE), *test, bench.eval_batch)
    reference = next(c for c in candidates if c.name == REFERENCE)
    reference_test = evaluate(predictor(REFERENCE), *test, bench.eval_batch)
    source = paths[chosen.name]
    with atomic_dir(out) as folder:
        delivered = load_predictor(copy_artifact(source, folder, predictor(chosen.name).name), bench.threads)
        delivered_test = evaluate(delivered, *test, bench.eval_batch)
        write_json_atomic(folder / DEPLOY_FILE, deploy_manifest(delivered, bench.threads, {
            "source": {"artifact": chosen.name, "label": chosen.label, "sha256": sha256_path(source),
                       "path": source.relative_to(models).as_posix()},
            "latency_ms_p50": chosen.latency_ms_p50,
            "ratio_vs_ort_fp32_baseline": timings[chosen.name]["ratio_vs_ort_fp32_baseline"],
            "size_bytes": chosen.size_bytes,
            "budget": dataclasses.asdict(budget),
            "validation": {"split": VALIDATION_SPLIT, "accuracy": chosen_val, "baseline_accuracy": baseline_val,
                           "num_images": len(validation[1])},
            "test": {"split": "test", "accuracy": delivered_test["accuracy"],
                     "baseline_accuracy": baseline_test["accuracy"], "num_images": len(test[1])}}))
    metrics = {
        "artifact": chosen.name,
        "accuracy": delivered_test["accuracy"], "baseline_accuracy": baseline_test["accuracy"],
        "accuracy_drop": baseline_test["accuracy"] - delivered_test["accuracy"],
        "val_accuracy": chosen_val, "baseline_val_accuracy": baseline_val,
        "val_accuracy_drop": baseline_val - chosen_val,
        "latency_ms_p50": chosen.latency_ms_p50, **{key: timings[chosen.name][key] for key in (
            "ratio_vs_baseline", "ratio_vs_ort_fp32_baseline")},
        "size_bytes": chosen.size_bytes, "max_accuracy_drop": budget.max_accuracy_drop,
        "latency_tie": budget.latency_tie,
        "candidates_scored": len(scores),  # on the validation split, the baseline included
        # ONNX Runtime fp32 on the baseline (artifacts.REFERENCE), verified like the baseline: the report's row of it.
        "reference_accuracy": reference_test["accuracy"], "reference_size_bytes": reference.size_bytes,
    }
    return metrics, log


def copy_artifact(source: Path, folder: Path, runtime: str) -> Path:
    """Copy the artifact `source` (a file or a TVM folder) into the deploy folder under its runtime's name."""
    artifact = folder / ARTIFACT_NAMES[runtime]
    if source.is_dir():
        shutil.copytree(source, artifact)
    else:
        shutil.copyfile(source, artifact)
    return artifact


def deploy_manifest(predictor, threads: int, evidence: dict) -> dict:
    """deploy.json for a loaded artifact: how to run it (runtime/deploy.py says what a program needs), then the
    `evidence` it was chosen on (source, latency, budget, accuracy)."""
    tvm_manifest = getattr(predictor, "manifest", None)  # a TVM artifact's own: its target and fixed batch
    return {
        "format": DEPLOY_FORMAT,
        "name": "lprnet",
        "runtime": predictor.name,
        "artifact": ARTIFACT_NAMES[predictor.name],
        "target": tvm_manifest["target"] if tvm_manifest else {"kind": "cpu"},
        "threads": threads,
        "input": input_spec(tvm_manifest["input_shape"][0] if tvm_manifest else "N"),
        "output": output_spec(predictor.alphabet.num_classes),
        "alphabet": {"name": predictor.alphabet.name, "chars": predictor.alphabet.chars},
        **evidence,
    }
