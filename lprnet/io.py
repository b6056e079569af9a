"""Atomic file writes: every artifact and metrics file appears whole or not at all.

A stage killed mid-write leaves the previous file (or none), never a truncated one; the temporary file it leaves
beside it is removed by the next write of the same path. Does not decide what to write (see metrics.py, artifacts.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def leftovers(path: str | os.PathLike) -> list[Path]:
    """The temporary files and folders that writes of `path` killed before their rename left beside it."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    # The names tempfile gives them below: ".NAME." + 8 random characters + suffix.
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.(tmp|old)")
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def remove_leftovers(path: str | os.PathLike) -> None:
    """Remove what a killed write of `path` left (a stage is the only writer of its outputs, so none is live)."""
    for leftover in leftovers(path):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch_atomic(path: str | os.PathLike, obj) -> None:
    """torch.save to `path`, atomically. torch.save names the archive's top folder after the file it writes, here
    a random temporary name; through a file object it is always "archive", so equal content gives equal bytes."""
    import torch  # here, not at the top: the rest of this module is needed by stages that never load torch

    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)


def load_torch(path: str | os.PathLike, what: str):
    """torch.load of `path` with weights_only=True (tensors and plain data only: nothing in the file can run code);
    an InputError naming the file and saying it is not a loadable `what` for anything else. A file holding other
    objects is refused as such, without PyTorch's advice to load it unsafely."""
    import pickle

    import torch

    from lprnet.errors import InputError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # PyTorch's message goes on to advise loading the file unsafely: not passed on.
        if "Unsupported global" in str(error):
            raise InputError(f"{path}: not a {what}: it holds objects other than tensors and plain data, which are "
                             "never unpickled (they could run code)") from None
        raise InputError(f"{path}: not a loadable {what} (not a PyTorch archive of tensors)") from None
    except Exception as error:  # torch raises many types for a corrupt file (zip, pickle, storage); name the file
        first = str(error).strip().splitlines()
        raise InputError(f"{path}: not a loadable {what} ({type(error).__name__}"
                         f"{': ' + first[0][:200] if first else ''})") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the artifact folder should have ordinary permissions
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
