"""The user's CLI.

  python -m lprnet eval ARTIFACT --images DIR [--batch N] [--threads N]   metrics JSON for labelled images
  python -m lprnet predict ARTIFACT IMAGE...                              one plate per image
  python -m lprnet gate --against REV [--remeasure]                       fail on accuracy/latency regressions
  python -m lprnet sweep PARAM [--out PREFIX] [-n N]                      plot a `dvc exp run -S PARAM=...` sweep
  python -m lprnet tune-budget --trials N --checkpoints A,B,...           tuned TVM latency against trials
  python -m lprnet profile ARTIFACT [--out docs/speed.md]                 the kernels of a compiled artifact

ARTIFACT is any model file the pipeline writes (models/deploy, the delivered model, included), or a state dict
published by LPRNet_Pytorch. `predict` on an ONNX or TVM artifact imports neither torch nor the onnx package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lprnet.errors import InputError
from lprnet.model.alphabet import ALPHABETS, get_alphabet
from lprnet.model.data import list_images, load_folder, load_image
from lprnet.pipeline import gate
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.evaluate import predict_texts
from lprnet.runtime.predictor import MAX_THREADS, load_predictor

# The CLI's own measuring settings: it runs on any artifact, inside the pipeline's repository or not, so it does not
# read params.yaml (whose `bench:` section the stages use). The first three are its flags' defaults.
THREADS, EVAL_BATCH, RUNS = 2, 16, 100
PROFILE_ROUNDS, PROFILE_TOP = 20, 12  # `profile`: timings per kernel, and how many of the slowest it lists
EVAL_BENCH = {"warmup": 10, "throughput_batch": 32, "throughput_runs": 10, "throughput_seconds": 3.0}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the argument (`error: argument --threads: ...`), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {' '.join(message.split())}\n")


def int_from(low: int, high: int | None = None):
    """An argparse type: an integer of at least `low` (and at most `high`)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m lprnet", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("artifact", type=Path, help="model file (pipeline artifact or LPRNet_Pytorch state dict)")
        sub.add_argument("--threads", type=int_from(1, MAX_THREADS), default=THREADS,
                         help=f"CPU threads for inference (at most {MAX_THREADS})")
        sub.add_argument("--batch", type=int_from(1), default=EVAL_BATCH, help="images per forward pass")
        sub.add_argument("--alphabet", choices=sorted(ALPHABETS),
                         help="alphabet of a bare state dict (default: inferred from its class count); any "
                              "other artifact carries its own, which must be this one")

    evaluate = commands.add_parser("eval", help="accuracy, latency, size of an artifact on labelled images")
    add_common(evaluate)
    evaluate.add_argument("--images", type=Path, required=True, help="folder of images named by plate text")
    evaluate.add_argument("--runs", type=int_from(1), default=RUNS, help="batch-1 latency samples")

    predict = commands.add_parser("predict", help="print the plate read from each image")
    add_common(predict)
    predict.add_argument("images", type=Path, nargs="+")
    gate.add_parser(commands)

    sweep = commands.add_parser("sweep", help="CSV and PNG of accuracy, latency and size over DVC experiments")
    sweep.add_argument("param", help="the swept param, as in `dvc exp run -S`, e.g. prune.ratio")
    sweep.add_argument("--out", type=Path, help="output prefix (default: reports/sweep_PARAM)")
    sweep.add_argument("-n", "--num", type=int_from(1), default=1,
                       help="include experiments of the last N commits, as `dvc exp show -n` (default: 1)")

    profile = commands.add_parser("profile", help="per-kernel time of a TVM or ONNX artifact (or a deploy folder "
                                                  "of one), against this CPU's measured peaks, as Markdown")
    profile.add_argument("artifact", type=Path, help="e.g. models/deploy")
    profile.add_argument("--threads", type=int, default=THREADS, help="CPU threads, as the benchmark's bench.threads")
    profile.add_argument("--rounds", type=int, default=PROFILE_ROUNDS, help="timings per kernel; the median counts")
    profile.add_argument("--top", type=int, default=PROFILE_TOP, help="the slowest kernels listed one by one")
    profile.add_argument("--out", type=Path, help="write the page here (e.g. docs/speed.md) instead of printing it")

    budget = commands.add_parser("tune-budget", help="tune the layout-passed module long, time checkpoints of it")
    budget.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    budget.add_argument("--trials", type=int, required=True, help="total MetaSchedule trials")
    # The search settings default to the params file's `tune` section, so that a study tunes as the stage does.
    budget.add_argument("--per-task", type=int, help="at most this many trials for any one kernel "
                                                     "(default: tune.trials_per_task)")
    budget.add_argument("--per-iteration", type=int, help="candidates per task and search round "
                                                          "(default: tune.trials_per_iteration)")
    budget.add_argument("--checkpoints", required=True, help="comma-separated trial counts to build and time")
    budget.add_argument("--population", type=int,
                        help="the evolutionary search's population per round (default: tune.population)")
    budget.add_argument("--seed", type=int, help="default: tune.seed")
    budget.add_argument("--weight-layout-rewrite", action=argparse.BooleanOptionalAction,
                        help="let schedules choose the weights' layout (default: tune.weight_layout_rewrite)")
    budget.add_argument("--models", type=Path, default=Path("models"), help="the pipeline's models folder")
    budget.add_argument("--work-dir", type=Path, help="database folder (default: models/tune-budget/PRECISION-TRIALS)")
    budget.add_argument("--out", type=Path, help="output prefix (default: reports/tune_budget_PRECISION)")
    budget.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="its tvm target, bench settings and tune defaults")
    return parser


def tune_budget(args) -> int:
    from lprnet.compile.tvm.tune import TuneParams
    from lprnet.pipeline.params import read_section
    from lprnet.pipeline.tune_budget import write_budget_study
    from lprnet.pipeline.tvm_step import TVMParams

    try:
        checkpoints = [int(part) for part in args.checkpoints.split(",")]
    except ValueError:
        print(f"error: --checkpoints {args.checkpoints!r}: expected comma-separated integers", file=sys.stderr)
        return 1

    def given(value, default):
        return default if value is None else value

    try:
        bench = read_section(args.params, "bench", BenchConfig)
        target = read_section(args.params, "tvm", TVMParams).target
        tune = read_section(args.params, "tune", TuneParams)
        table = write_budget_study(
            args.out or Path("reports") / f"tune_budget_{args.precision}",
            layout_ir=args.models / "tvm" / "layout" / f"{args.precision}.json",
            onnx_model=args.models / "onnx" / f"{args.precision}.onnx",
            untuned=args.models / "tvm" / "import" / args.precision,
            work_dir=args.work_dir or args.models / "tune-budget" / f"{args.precision}-{args.trials}",
            total_trials=args.trials, trials_per_task=given(args.per_task, tune.trials_per_task),
            trials_per_iteration=given(args.per_iteration, tune.trials_per_iteration), checkpoints=checkpoints,
            target=target, bench=bench, population=given(args.population, tune.population),
            seed=given(args.seed, tune.seed),
            weight_layout_rewrite=given(args.weight_layout_rewrite, tune.weight_layout_rewrite))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(table.to_string(index=False))
    return 0


def profile(args, argv) -> int:
    from lprnet.io import write_text_atomic
    from lprnet.runtime.floor import measure_floor
    from lprnet.runtime.profile import profile_artifact, render

    try:
        if args.threads < 1 or args.top < 1:
            raise InputError(f"--threads and --top must be at least 1, got {args.threads} and {args.top}")
        measured = profile_artifact(args.artifact, args.threads, args.rounds)
        page = render(measured, measure_floor(args.threads), "python -m lprnet " + " ".join(argv), args.top)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.out:
        write_text_atomic(args.out, page)
    else:
        print(page, end="")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "gate":
        return gate.run(args)
    if args.command == "profile":
        return profile(args, argv)
    if args.command == "tune-budget":
        return tune_budget(args)
    if args.command == "sweep":
        from lprnet.pipeline.sweep import write_sweep

        try:
            out = args.out or Path("reports") / f"sweep_{args.param.replace('.', '_')}"
            table = write_sweep(args.param, out, num=args.num)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(table.to_string(index=False))
        return 0
    try:
        alphabet = get_alphabet(args.alphabet) if args.alphabet else None
        predictor = load_predictor(args.artifact, args.threads, alphabet)
        if args.command == "eval":
            from lprnet.runtime.metrics import artifact_metrics  # imports torch: `predict` must run without it

            images, labels = load_folder(list_images(args.images), predictor.alphabet)
            config = BenchConfig(threads=args.threads, eval_batch=args.batch, runs=args.runs, **EVAL_BENCH)
            print(json.dumps(artifact_metrics(predictor, args.artifact, images, labels, config), indent=2))
        else:
            images = np.stack([load_image(path) for path in args.images])
            for path, text in zip(args.images, predict_texts(predictor, images, args.batch)):
                print(f"{path}\t{text}")
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
