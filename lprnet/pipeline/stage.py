"""What every stage script shares: its command line, its params section, and one-line errors.

A stage's bad input (a missing file, a wrong key or value: lprnet.errors.InputError) ends it with `error: <message>`
on stderr and exit status 1, not a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lprnet.errors import InputError
from lprnet.pipeline.params import read_section


def parse_args(description: str, paths: list[str], argv=None) -> argparse.Namespace:
    """`--params` plus one required `--<name>` option per path the stage reads or writes (all named in dvc.yaml)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml")
    for name in paths:
        parser.add_argument(f"--{name}", required=True)
    return parser.parse_args(argv)


def run(main: Callable[[], None]) -> None:
    try:
        main()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


__all__ = ["parse_args", "read_section", "run"]
