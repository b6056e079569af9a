"""Atomic writes (lprnet.io): a failed or SIGKILLed write leaves the previous file, and its leftovers go with the next
write of the same path.

The kill test runs each writer of lprnet.io in a child process that stops at a chosen point of the write (opened,
half written, before the rename; tests/pause_writes.py) and SIGKILLs it there; the same test run on two writers that
write in place must find a partial file, which shows that it would catch a writer that is not atomic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from lprnet.io import (
    atomic_dir,
    atomic_path,
    leftovers,
    save_torch_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from tests.pause_writes import pause_env, wait_until_paused

REPO = Path(__file__).resolve().parents[1]


def payload(version: str) -> bytes:
    return f"{version}:".encode() * 20_000


def write_bytes(path, version):
    write_bytes_atomic(path, payload(version))


def write_text(path, version):
    write_text_atomic(path, payload(version).decode())


def write_json(path, version):
    write_json_atomic(path, {"version": version, "values": list(range(20_000))})


def save_torch(path, version):
    import torch

    save_torch_atomic(path, {"weight": torch.full((20_000,), float(len(version)))})


def through_atomic_path(path, version):
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        for _ in range(4):
            file.write(payload(version))


def through_atomic_dir(path, version):
    with atomic_dir(path) as tmp:
        for name in ("a.bin", "b.bin"):
            (tmp / name).write_bytes(payload(version + name))


def in_place(path, version):
    """What the kill test must catch: a writer that writes its destination directly."""
    with open(path, "wb") as file:
        file.write(payload(version))


def folder_in_place(path, version):
    Path(path).mkdir(exist_ok=True)
    for name in ("a.bin", "b.bin"):
        (Path(path) / name).write_bytes(payload(version + name))


class Writer(NamedTuple):
    write: Callable[[str | os.PathLike, str], None]
    folder: bool  # writes a folder of two files, else one file
    atomic: bool


WRITERS = {
    "write_bytes_atomic": Writer(write_bytes, folder=False, atomic=True),
    "write_text_atomic": Writer(write_text, folder=False, atomic=True),
    "write_json_atomic": Writer(write_json, folder=False, atomic=True),
    "save_torch_atomic": Writer(save_torch, folder=False, atomic=True),
    "atomic_path": Writer(through_atomic_path, folder=False, atomic=True),
    "atomic_dir": Writer(through_atomic_dir, folder=True, atomic=True),
    "in_place": Writer(in_place, folder=False, atomic=False),
    "folder_in_place": Writer(folder_in_place, folder=True, atomic=False),
}
# The child: the writer, in a process that pauses at the point the test names (tests/pause_writes.py).
CHILD = """
import sys
import tests.pause_writes
from tests.test_io import WRITERS
WRITERS[sys.argv[1]].write(sys.argv[2], "new")
"""
# Just opened (nothing written), half written (a folder's first file whole, its second half), all written and
# closed but not yet renamed; over a previous version, and mid-write of a first one too. An in-place writer has no
# rename. save_torch_atomic mid-write only: its child imports torch (3 s).
KILL_POINTS = (("open", True), ("write", False), ("write", True), ("rename", True))
KILL_CASES = [pytest.param(name, point, previous, id=f"{name}-{point}-{'over-previous' if previous else 'first'}")
              for name, writer in WRITERS.items() for point, previous in KILL_POINTS
              if (writer.atomic or point != "rename") and (name != "save_torch_atomic" or point == "write")]


def snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def describe(state: dict[str, bytes] | None) -> str:
    return "absent" if state is None else f"{len(state)} file(s) of {[len(v) for v in state.values()]} bytes"


def partial_after_kill(target: Path, before: dict[str, bytes] | None, folder: bool) -> str | None:
    """What is wrong with `target` after a killed write, or None: a file must be exactly what it was before (the
    rename is atomic); a folder what it was before, or absent (atomic_dir moves the previous one aside before it
    renames the new one in: a folder cannot be swapped atomically)."""
    after = snapshot(target)
    if after == before or (folder and after is None):
        return None
    return f"{target} is {describe(after)} after the kill, was {describe(before)}: partly written"


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "metrics.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("stage failed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_failed_folder_write_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "artifact"
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"new")
        raise RuntimeError("stage failed")
    assert (target / "weights.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


@pytest.mark.parametrize(("name", "point", "previous"), KILL_CASES)
def test_a_write_sigkilled_mid_way_leaves_the_previous_version_and_the_next_write_cleans_up(tmp_path, name, point,
                                                                                           previous):
    writer = WRITERS[name]
    target = tmp_path / "out" / ("artifact" if writer.folder else "model.bin")
    target.parent.mkdir()
    reference = tmp_path / "reference" / target.name
    reference.parent.mkdir()
    writer.write(reference, "new")  # what the killed write would have written
    if previous:
        writer.write(target, "previous")
    before = snapshot(target)
    marker = tmp_path / "paused"
    at = "rename" if point == "rename" else f"{point}:{2 if writer.folder else 1}"  # a folder: its second file
    env = {**os.environ, **pause_env(target, at, marker),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", CHILD, name, str(target)], env=env)
    try:
        wait_until_paused(child, marker)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    problem = partial_after_kill(target, before, writer.folder)
    if not writer.atomic:
        # The check against a writer that writes in place, killed at the same point: it must see the partial file,
        # or passing it would say nothing about the atomic writers.
        assert problem is not None, f"{name} left {describe(snapshot(target))}: the check cannot tell it from atomic"
        return
    assert problem is None, problem
    assert leftovers(target), "the kill left no temporary file beside the target: it did not land mid-write"
    writer.write(target, "new")
    assert snapshot(target) == snapshot(reference)
    assert leftovers(target) == []


def test_leftovers_of_one_path_are_not_another_paths(tmp_path):
    (tmp_path / ".fp32.onnx.abcd1234.tmp").write_text("partial")
    (tmp_path / ".fp32.abcd1234.tmp").mkdir()
    assert [p.name for p in leftovers(tmp_path / "fp32")] == [".fp32.abcd1234.tmp"]
    write_text_atomic(tmp_path / "fp32", "x")
    assert (tmp_path / ".fp32.onnx.abcd1234.tmp").exists()
    assert not (tmp_path / ".fp32.abcd1234.tmp").exists()


def test_equal_torch_objects_give_equal_files_whatever_the_name(tmp_path):
    import torch

    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    save_torch_atomic(tmp_path / "a.pt", state)
    save_torch_atomic(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["weight"], state["weight"])
