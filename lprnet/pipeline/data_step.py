"""The data stage's work: the `data` section of params.yaml, checked, and the prepared folder it describes.

Writes one folder (all or nothing): `train.npz`, `calib.npz`, `test.npz` and `alphabet.json`. With `source: synthetic`
the splits are rendered (lprnet.model.synth: image i of a split is a pure function of (seed, split, i)); with
`source: folder` they are read from a folder of labelled images and split by its subfolders or by a hash of each
file name (lprnet.model.data), the `finetune` share becoming train.npz, the split that training and fine-tuning read.
Does not render, decode or split images itself (`other_sizes: refuse` reads image headers only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lprnet.errors import InputError
from lprnet.io import atomic_dir, write_json_atomic
from lprnet.model import data, synth
from lprnet.model.alphabet import Alphabet, get_alphabet
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH

SOURCES = ("synthetic", "folder")
OTHER_SIZES = ("resize", "refuse")
AUTO = "auto"  # the alphabet of the source: latin for synthetic plates, chinese68 (the published set) for a folder
AUTO_ALPHABETS = {"synthetic": "latin", "folder": "chinese68"}
SYNTHETIC_SPLITS = ("train", "calib", "test")


@dataclass(frozen=True)
class DataParams:
    """The `data:` section of params.yaml (each key's meaning is there, beside its value), checked here: the sizes
    when the source is synthetic, the folder and the fractions when it is a folder (the one source that reads
    them), every other key always."""

    source: str  # synthetic | folder
    folder: str  # source=folder: the labelled images
    alphabet: str  # auto | a name in lprnet.model.alphabet.ALPHABETS
    seed: int  # synthetic plates
    train_size: int  # synthetic split sizes
    calib_size: int
    test_size: int
    calib_fraction: float  # folder split shares, by a hash of the file name
    finetune_fraction: float
    test_fraction: float
    other_sizes: str  # a folder image that is not 94x24: resize (with a warning) | refuse

    def __post_init__(self):
        if self.source not in SOURCES:
            raise InputError(f"data.source: unknown source {self.source!r}; valid: {', '.join(SOURCES)}")
        if self.other_sizes not in OTHER_SIZES:
            raise InputError(f"data.other_sizes: unknown value {self.other_sizes!r}; valid: {', '.join(OTHER_SIZES)}")
        if self.alphabet != AUTO:
            try:
                get_alphabet(self.alphabet)
            except InputError as error:
                raise InputError(f"data.alphabet: {error} (or {AUTO})") from None
        if self.seed < 0:
            raise InputError(f"data.seed must be >= 0, got {self.seed!r}")
        if self.source == "synthetic":
            for split in SYNTHETIC_SPLITS:
                count = getattr(self, f"{split}_size")
                if count < 1:
                    raise InputError(f"data.{split}_size must be at least 1, got {count}")
        else:
            if not self.folder:
                raise InputError("data.folder must name a folder of labelled images when data.source=folder")
            shares = {key: getattr(self, key) for key in ("calib_fraction", "finetune_fraction", "test_fraction")}
            # `not >=` and `not <=` also refuse NaN.
            if not all(share >= 0 for share in shares.values()) or not abs(sum(shares.values()) - 1) <= 1e-6:
                raise InputError(f"data.calib_fraction, data.finetune_fraction and data.test_fraction must be >= 0 "
                                 f"and sum to 1, got {', '.join(f'{k}={v!r}' for k, v in shares.items())}")

    @property
    def alphabet_name(self) -> str:
        return AUTO_ALPHABETS[self.source] if self.alphabet == AUTO else self.alphabet

    @property
    def fractions(self) -> dict[str, float]:
        """Split name -> share, in the order hash_split walks them."""
        return {"calib": self.calib_fraction, "train": self.finetune_fraction, "test": self.test_fraction}


def refuse_other_sizes(files: list[Path]) -> None:
    """Stop at the first image that is not INPUT_WIDTH x INPUT_HEIGHT (reading headers only)."""
    for path in files:
        try:
            with Image.open(path) as image:
                size = image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            continue  # unreadable: data.load_folder names it with its reason
        if size != (INPUT_WIDTH, INPUT_HEIGHT):
            raise InputError(f"{path}: {size[0]}x{size[1]} pixels, not {INPUT_WIDTH}x{INPUT_HEIGHT} "
                             f"(data.other_sizes is refuse; set it to resize to accept such images)")


def render_synthetic(out: Path, params: DataParams, alphabet: Alphabet) -> dict[str, int]:
    sizes = {}
    for split in SYNTHETIC_SPLITS:
        images, labels = synth.render_split(params.seed, split, getattr(params, f"{split}_size"), alphabet.symbols,
                                            workers=os.cpu_count() or 1)
        data.save_split(out / f"{split}.npz", images, labels)
        sizes[split] = len(labels)
    return sizes


def import_folder(out: Path, params: DataParams, alphabet: Alphabet) -> dict[str, int]:
    sizes = {}
    for split, files in data.folder_splits(params.folder, params.fractions).items():
        if params.other_sizes == "refuse":
            refuse_other_sizes(files)
        images, labels = data.load_folder(files, alphabet)
        data.save_split(out / f"{split}.npz", images, labels)
        sizes[split] = len(labels)
    if sizes["test"] == 0:
        raise InputError(f"{params.folder}: the test split is empty; add images or raise data.test_fraction")
    return sizes


def data_stage(out: str | os.PathLike, params: DataParams) -> dict:
    """Write the prepared folder `out`; returns the metrics (the size of each split)."""
    alphabet = get_alphabet(params.alphabet_name)
    with atomic_dir(out) as folder:
        prepare = render_synthetic if params.source == "synthetic" else import_folder
        sizes = prepare(folder, params, alphabet)
        write_json_atomic(folder / "alphabet.json", {"alphabet": alphabet.name, "source": params.source})
    return {f"num_{split}": size for split, size in sizes.items()}
