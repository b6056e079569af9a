"""Atomic writes (lprnet.io): a failed or SIGKILLed write leaves the previous file, and its leftovers go with the next
write of the same path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lprnet.io import atomic_dir, atomic_path, leftovers, save_torch_atomic, write_text_atomic

# Writes `path` through atomic_path in 1 MB chunks, slowly, so that the test can kill it mid-write.
SLOW_WRITER = """
import sys, time
from lprnet.io import atomic_path
with atomic_path(sys.argv[1]) as tmp, open(tmp, "wb") as out:
    for _ in range(600):
        out.write(b"x" * 2**20)
        out.flush()
        time.sleep(0.01)
"""


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


def test_a_sigkilled_write_leaves_the_previous_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "model.pt"
    write_text_atomic(target, "previous")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], env=env)
    try:
        deadline = time.monotonic() + 60
        # Kill once the temporary file holds some data: the process is in the middle of writing it.
        while not any(p.stat().st_size > 2**20 for p in leftovers(target)):
            assert writer.poll() is None, "the writer exited before it was killed"
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.01)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    assert writer.returncode == -signal.SIGKILL
    assert target.read_text() == "previous"
    assert len(leftovers(target)) == 1  # the killed write's partial temporary file
    write_text_atomic(target, "next")
    assert target.read_text() == "next"
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
