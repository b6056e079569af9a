"""What every stage script shares: its command line, its params section, and one-line errors.

A stage's bad input (a missing file, a wrong key or value: lprnet.errors.InputError) ends it with `error: <message>`
on stderr and exit status 1, not a traceback. Anything else is a bug and keeps its traceback.

Every path a stage takes is declared as what it reads, a file it writes, a folder it replaces whole, or a folder it
writes files into. Before any work, `parse_args` (and `refuse_overlap` for paths named in params.yaml) refuses
outputs that are, hold or sit inside anything the stage reads (the params file included), two outputs that are one
path or one inside a replaced folder, and outputs whose kind clashes with what is on disk: no path given to a stage
can make it write over, into or around its own input.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lprnet.errors import InputError
from lprnet.pipeline.params import read_section

PathLike = str | os.PathLike


def parse_args(description: str, reads: Sequence[str], writes: Sequence[str], folders: Sequence[str] = (),
               into: Sequence[str] = (), within: Mapping[str, Sequence[str]] = {}, argv=None  # noqa: B006
               ) -> argparse.Namespace:
    """`--params` plus one required `--<name>` option per path the stage reads (`reads`), writes as a file
    (`writes`), replaces as a folder (`folders`) or writes files into (`into`), all named in dvc.yaml; the paths
    checked by `refuse_overlap`. `within` names folders of which the stage reads only the given entries (the select
    stage reads the artifacts in models/ and writes models/deploy)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml")
    for name in (*reads, *writes, *folders, *into, *within):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args(argv)
    entries = {f"--{name} {entry}": Path(getattr(args, name)) / entry for name, names in within.items()
               for entry in names}
    args.declared = ({"--params": args.params, **{f"--{name}": getattr(args, name) for name in reads}, **entries},
                     {f"--{name}": getattr(args, name) for name in writes},
                     {f"--{name}": getattr(args, name) for name in folders},
                     {f"--{name}": getattr(args, name) for name in into})
    refuse_overlap(*args.declared)
    return args


def refuse_params_paths(args: argparse.Namespace, reads: Mapping[str, PathLike]) -> None:
    """`refuse_overlap` of the stage's outputs with more inputs, named in params.yaml (e.g. `data.folder`); empty
    paths (the key's "none") are left out."""
    declared_reads, *outputs = args.declared
    refuse_overlap({**declared_reads, **{name: path for name, path in reads.items() if path}}, *outputs)


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def refuse_overlap(reads: Mapping[str, PathLike], writes: Mapping[str, PathLike],
                   folders: Mapping[str, PathLike] = {}, into: Mapping[str, PathLike] = {}) -> None:  # noqa: B006
    """An InputError naming both paths when an output (file `writes`, replaced `folders`, or `into` folders the
    stage writes files into) is, holds or sits inside an input (`reads`), when two outputs are one path or one sits
    in a replaced folder, or when an output's kind clashes with what exists (a file output that is a folder, a folder
    output that is a file, a parent that is a file)."""
    def resolved(paths, replaced: bool):
        # A file or folder the stage replaces is renamed onto its path: a link there is replaced, not followed
        # (DVC may link outputs into its cache). Inputs, and folders written into, are followed to what they are.
        return {name: Path(path).parent.resolve() / Path(path).name if replaced and Path(path).name not in ("", "..")
                else Path(path).resolve() for name, path in paths.items()}

    reads, into = resolved(reads, False), resolved(into, False)
    writes, folders = resolved(writes, True), resolved(folders, True)
    outputs = {**writes, **folders, **into}
    for out_name, out in outputs.items():
        for in_name, source in reads.items():
            if _overlap(out, source):
                raise InputError(f"{out_name} {out} overlaps {in_name} {source}: a stage never writes over, into "
                                 "or around what it reads")
        for folder_name, folder in folders.items():
            if out_name != folder_name and _overlap(out, folder):
                raise InputError(f"{out_name} {out} overlaps {folder_name} {folder}, a folder the stage replaces")
        for parent in out.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InputError(f"{out_name} {out}: {parent} is not a folder")
                break
    same = [name for name, path in outputs.items() if list(outputs.values()).count(path) > 1]
    if same:
        raise InputError(f"{' and '.join(same)} name the same path {outputs[same[0]]}")
    for name, path in writes.items():
        if path.is_dir():
            raise InputError(f"{name} {path}: a folder, where the stage writes a file")
    for name, path in {**folders, **into}.items():
        if path.exists() and not path.is_dir():
            raise InputError(f"{name} {path}: a file, where the stage writes a folder")


def run(main: Callable[[], None]) -> None:
    try:
        main()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


__all__ = ["parse_args", "read_section", "refuse_overlap", "refuse_params_paths", "run"]
