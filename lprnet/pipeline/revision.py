"""Metrics files in the workspace or at a git revision, and the rows that comparisons of two such sets line up.

The one reader of metrics at a revision, for the regression gate (`python -m lprnet gate --against REV`) and for the
report's changes since the previous commit. `read_metrics(folder, rev)` reads every `*.json` directly in `folder`
through `dvc.api.DVCFileSystem`, which sees the files git holds at `rev` (the pipeline's metrics are `cache: false`
and committed) and DVC-tracked ones too; without `rev`, the workspace's files. `metrics_at` turns them into
comparison rows: one per stage metrics file and one per artifact of benchmark.json (`benchmark/<artifact>`, with the
run's settings such as `threads`; see artifacts.py for its key scheme).

A file with nested values cannot be lined up with flat ones: benchmark.json was nested before its keys were flat.
Such a file is named in `Metrics.not_flat` and has no rows; the gate and the report say so instead of comparing it.

Does not run any stage, re-measure anything, or decide what counts as a regression (see gate.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lprnet.errors import InputError
from lprnet.pipeline.artifacts import BENCHMARK, split_benchmark


class RevisionError(InputError):
    """The revision cannot be read: unknown, no git repository, or a repository DVC cannot open."""


@dataclass(frozen=True)
class Metrics:
    """One side of a comparison."""

    rows: dict[str, dict]  # row name (file stem, or `benchmark/<artifact>`) -> flat metrics
    not_flat: tuple[str, ...] = ()  # stems of files with nested values, left out of `rows`


def read_metrics(folder: str | os.PathLike, rev: str | None = None) -> dict[str, dict]:
    """File stem -> content of every `*.json` directly in `folder` (relative to the working directory), in the
    workspace or, with `rev`, at that git revision; {} when there are none. Raises RevisionError when `rev` cannot
    be read, InputError for a file that is not a JSON object."""
    if rev is None:
        return {path.stem: parse_metrics(path.read_bytes(), str(path))
                for path in sorted(Path(folder).glob("*.json")) if path.is_file()}
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.scm import RevError

    fs = dvc.api.DVCFileSystem(rev=rev)
    try:
        inside = in_repository(Path(folder), Path(fs.repo.scm.root_dir))
        try:
            entries = fs.ls(inside, detail=True)
        except FileNotFoundError:
            return {}
        names = sorted(entry["name"] for entry in entries
                       if entry["type"] == "file" and entry["name"].endswith(".json"))
        return {Path(name).stem: parse_metrics(fs.read_bytes(name), f"{name} at {rev!r}")
                for name in names}
    except RevError:
        raise RevisionError(f"unknown revision {rev!r}") from None
    except DvcException as error:  # e.g. not a git repository
        raise RevisionError(f"cannot read metrics at revision {rev!r}: {error}") from None
    finally:
        fs.close()


def in_repository(folder: Path, root: Path) -> str:
    """`folder` as a path from the repository's root, as DVCFileSystem names files."""
    try:
        inside = folder.resolve().relative_to(root.resolve())
    except ValueError:
        raise InputError(f"{folder}: outside the git repository {root}") from None
    return "" if inside == Path() else inside.as_posix()


def parse_metrics(content: bytes | str, where: str) -> dict:
    try:
        metrics = json.loads(content.decode("utf-8") if isinstance(content, bytes) else content)
    except UnicodeDecodeError as error:
        raise InputError(f"{where}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(metrics, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(metrics).__name__}")
    return metrics


def comparable(files: dict[str, dict]) -> Metrics:
    """The comparison rows of metrics files (stem -> content): a stage's file is one row under its stem;
    benchmark.json is one row per artifact, `benchmark/<artifact>`, each with the run's settings."""
    rows, not_flat = {}, []
    for stem, metrics in files.items():
        if any(isinstance(value, (dict, list)) for value in metrics.values()):
            not_flat.append(stem)
        elif stem == BENCHMARK:
            settings, results = split_benchmark(metrics)
            rows |= {f"{BENCHMARK}/{artifact}": {**settings, **values} for artifact, values in results.items()}
        else:
            rows[stem] = metrics
    return Metrics(rows, tuple(not_flat))


def metrics_at(folder: str | os.PathLike, rev: str | None = None) -> Metrics:
    """The comparison rows of `read_metrics(folder, rev)`."""
    return comparable(read_metrics(folder, rev))
