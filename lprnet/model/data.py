"""Labelled plate images: folders in the LPRNet_Pytorch convention, deterministic splits, and split files.

A folder is split by its `calib/`, `finetune/` (or `train/`) and `test/` subfolders when it has them, else by a hash
of each file name (`hash_split`), so a file stays in its split whatever else the folder holds. A split file is an
`.npz` with `images` (N,24,94,3) uint8 BGR and `labels` (N,) unicode strings, loaded without pickle. This module
does not render plates (see synth.py), does not read params (see lprnet/pipeline/data_step.py) and does not
normalise for a network beyond `to_network_input`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lprnet.errors import InputError, MissingFileError
from lprnet.io import atomic_path
from lprnet.model.alphabet import Alphabet
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH, PIXEL_MEAN, PIXEL_SCALE

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
MAX_PIXELS = 4096 * 4096  # a plate crop is tiny; a header claiming more is corrupt or hostile, not a plate


def label_from_filename(name: str) -> str:
    """'京PL3N67_1.jpg' -> '京PL3N67': the stem up to the first '-' or '_' (the LPRNet_Pytorch convention)."""
    stem = Path(name).stem
    return stem.split("-")[0].split("_")[0]


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as (24, 94, 3) uint8 BGR; other sizes are resized with a warning."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"declares {image.width}x{image.height} pixels")
            rgb = image.convert("RGB")
            if rgb.size != (INPUT_WIDTH, INPUT_HEIGHT):
                warnings.warn(f"{path}: {rgb.size[0]}x{rgb.size[1]} resized to {INPUT_WIDTH}x{INPUT_HEIGHT}",
                              stacklevel=2)
                rgb = rgb.resize((INPUT_WIDTH, INPUT_HEIGHT), Image.Resampling.BILINEAR)
            pixels = np.asarray(rgb)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{path}: unreadable image ({error})") from None
    return np.ascontiguousarray(pixels[:, :, ::-1])


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: no such folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return files


def load_folder(files: list[Path], alphabet: Alphabet) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of `files`; a label outside the alphabet or an unreadable file raises naming it."""
    labels = []
    for path in files:
        label = label_from_filename(path.name)
        try:
            alphabet.encode(label)
        except ValueError as error:
            raise InputError(f"{path}: {error}") from None
        if not label:
            raise InputError(f"{path}: empty plate text in the file name")
        labels.append(label)
    images = np.stack([load_image(p) for p in files]) if files else empty_images()
    return images, np.array(labels, dtype=str)


def empty_images() -> np.ndarray:
    return np.empty((0, INPUT_HEIGHT, INPUT_WIDTH, 3), dtype=np.uint8)


# Subfolder names accepted when a folder is already split; `finetune` and `train` are the same split.
SPLIT_FOLDERS = {"calib": "calib", "finetune": "train", "train": "train", "test": "test"}


def folder_splits(folder: str | os.PathLike, fractions: dict[str, float]) -> dict[str, list[Path]]:
    """The image files of each split: the subfolders' (SPLIT_FOLDERS) when `folder` has any, as
    {"train", "calib", "test"}; else every image of `folder` by `hash_split` over `fractions` (split name -> share,
    each >= 0, summing to 1), in the order of `fractions`."""
    folder = Path(folder)
    subfolders = {name: folder / name for name in SPLIT_FOLDERS if (folder / name).is_dir()}
    if subfolders:
        splits: dict[str, list[Path]] = {"train": [], "calib": [], "test": []}
        for name, path in subfolders.items():
            splits[SPLIT_FOLDERS[name]] += list_images(path)
        return splits
    splits = {name: [] for name in fractions}
    for path in list_images(folder):
        splits[hash_split(path.name, fractions)].append(path)
    return splits


def hash_split(name: str, fractions: dict[str, float]) -> str:
    """Assign a file name to a split by its SHA-256: stable across machines, runs and folder contents."""
    position = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2**64
    edge = 0.0
    for split, fraction in fractions.items():
        edge += fraction
        if position < edge:
            return split
    # A float sum just under 1 (or a position that rounds up to 1.0) must not reach a zero-fraction split.
    return [split for split, fraction in fractions.items() if fraction > 0][-1]


def save_split(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    assert images.dtype == np.uint8 and images.shape[1:] == (INPUT_HEIGHT, INPUT_WIDTH, 3), images.shape
    assert len(images) == len(labels)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, labels=np.asarray(labels, dtype=str))


def load_split(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels `save_split` wrote; an InputError naming the file for anything else (a truncated or
    foreign file, object arrays, which are never unpickled, other shapes or types)."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such split file (run `dvc repro data`)")
    try:
        with zipfile.ZipFile(path) as archive:  # np.load would read a lone .npy array, or a pickle, as well
            names = set(archive.namelist())
        if not {"images.npy", "labels.npy"} <= names:
            raise InputError(f"{path}: a split file holds `images` and `labels`, this one {sorted(names)}")
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: not a readable split file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (INPUT_HEIGHT, INPUT_WIDTH, 3):
        raise InputError(f"{path}: images are {images.dtype} {images.shape}, expected uint8 (N, {INPUT_HEIGHT}, "
                         f"{INPUT_WIDTH}, 3)")
    if labels.dtype.kind != "U" or labels.shape != (len(images),):
        raise InputError(f"{path}: labels are {labels.dtype} {labels.shape}, expected {len(images)} strings")
    return images, labels


def to_network_input(images: np.ndarray) -> np.ndarray:
    """(N,24,94,3) uint8 BGR -> (N,3,24,94) float32, the LPRNet_Pytorch normalisation (x - 127.5) / 128."""
    return ((images.astype(np.float32) - PIXEL_MEAN) * PIXEL_SCALE).transpose(0, 3, 1, 2).copy()


def load_prepared(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of the `data` stage's output folder."""
    return load_split(Path(folder) / f"{split}.npz")


def prepared_alphabet(folder: str | os.PathLike) -> Alphabet:
    import json

    from lprnet.model.alphabet import get_alphabet

    path = Path(folder) / "alphabet.json"
    if not path.is_file():
        raise MissingFileError(f"{path}: missing (run `dvc repro data`)")
    try:
        content = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not UTF-8 JSON ({error})") from None
    name = content.get("alphabet") if isinstance(content, dict) else None
    if not isinstance(name, str):
        raise InputError(f"{path}: expected an object with an `alphabet` name, got {content!r:.80}")
    try:
        return get_alphabet(name)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
