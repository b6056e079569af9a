"""Test helper: stop a process at a chosen point of writing one path, so that a test can SIGKILL it exactly there.

A process that imports this module with LPRNET_PAUSE_TARGET set wraps open() and os.replace; when it reaches the
point LPRNET_PAUSE_AT, it creates LPRNET_PAUSE_MARKER and sleeps until killed. The test waits for the marker, then
kills: no timing guesses, the kill always lands at that point. Copied as `sitecustomize.py` into a folder on
PYTHONPATH (`sitecustomize_dir`), it is in every Python process of a `dvc repro`, the stage's included.

Points, counting the files opened for writing at or under the target or under a temporary sibling of it (a name
starting with ".NAME."), whatever writes them, so that an in-place writer is paused the same way:
  open:K   the K-th such file has just been opened, nothing written to it
  write:K  half of the K-th such file's first write is written and flushed (earlier files are complete)
  rename   an os.replace onto the target is about to run (everything written and closed)
Does not kill anything, and does nothing when LPRNET_PAUSE_TARGET is unset.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

TARGET_VAR, AT_VAR, MARKER_VAR = "LPRNET_PAUSE_TARGET", "LPRNET_PAUSE_AT", "LPRNET_PAUSE_MARKER"
MAX_PAUSE_S = 300  # a paused process nobody kills exits by itself, so that a failed test leaves none behind


def pause_env(target: str | os.PathLike, at: str, marker: str | os.PathLike) -> dict[str, str]:
    return {TARGET_VAR: str(Path(target).absolute()), AT_VAR: at, MARKER_VAR: str(Path(marker).absolute())}


def sitecustomize_dir(folder: str | os.PathLike) -> Path:
    """`folder` holding this module as sitecustomize.py: put it first on PYTHONPATH."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(__file__, folder / "sitecustomize.py")
    return folder


def wait_until_paused(process: subprocess.Popen, marker: str | os.PathLike, timeout_s: float = 120) -> None:
    """Return once `process` (or a child of it) has paused; fail if it exits first or takes `timeout_s`."""
    marker = Path(marker)
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"the writer exited (status {process.returncode}) before it reached the pause point")
        if time.monotonic() > deadline:
            raise AssertionError(f"the writer did not reach the pause point in {timeout_s} s")
        time.sleep(0.01)


def _pause(marker: str) -> None:
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    deadline = time.monotonic() + MAX_PAUSE_S
    while time.monotonic() < deadline:
        time.sleep(0.5)
    os._exit(75)


def _install(target: Path, at: str, marker: str) -> None:
    kind, _, count = at.partition(":")
    if kind not in ("open", "write", "rename") or (kind != "rename") != count.isdigit():
        raise ValueError(f"{AT_VAR}={at!r}: expected open:K, write:K or rename")
    nth = int(count) if count else 0
    opened = 0
    real_open, real_replace = builtins.open, os.replace

    def concerns(file) -> bool:
        if not isinstance(file, (str, os.PathLike)):
            return False  # a file descriptor
        path = Path(os.path.abspath(os.fsdecode(file)))
        return any(p == target or (p.parent == target.parent and p.name.startswith(f".{target.name}."))
                   for p in (path, *path.parents))

    class HalfWrite:
        """The file, except that its first write of two or more bytes or characters stops halfway."""

        def __init__(self, file):
            self._file = file

        def write(self, data):
            if len(data) >= 2:
                self._file.write(data[:len(data) // 2])
                self._file.flush()
                _pause(marker)
            return self._file.write(data)

        def __getattr__(self, name):
            return getattr(self._file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return self._file.__exit__(*exc_info)

        def __iter__(self):
            return iter(self._file)

    def pausing_open(file, mode="r", *args, **kwargs):
        nonlocal opened
        handle = real_open(file, mode, *args, **kwargs)
        if kind == "rename" or not any(c in mode for c in "wax+") or not concerns(file):
            return handle
        opened += 1
        if opened != nth:
            return handle
        if kind == "open":
            _pause(marker)
        return HalfWrite(handle)

    def pausing_replace(src, dst, *args, **kwargs):
        if kind == "rename" and Path(os.path.abspath(os.fsdecode(dst))) == target:
            _pause(marker)
        return real_replace(src, dst, *args, **kwargs)

    builtins.open = io.open = pausing_open  # pathlib, zipfile and numpy call io.open; open() is builtins.open
    os.replace = pausing_replace


if os.environ.get(TARGET_VAR):
    _install(Path(os.environ[TARGET_VAR]), os.environ[AT_VAR], os.environ[MARKER_VAR])
