"""LPRNet, state-dict compatible with LPRNet_Pytorch (`backbone.N.*`, `container.0.*`).

One deliberate change from the original: the global-context normalisation divides each feature map by the mean
of its square *per sample*, not over the whole batch, so an image's logits do not depend on its batch mates.
At batch 1 the two are identical. This file does not load files (see artifacts.py) or train (see train.py).
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from lprnet.errors import InputError

# Indices in `backbone` whose outputs feed the global context, and their channel counts before the classes.
CONTEXT_TAPS = (2, 6, 13, 22)
# The most channels a config may give any layer (the published model's widest has 256): a config read from a file
# must not set up gigabytes of weights before its tensors are compared with it.
MAX_WIDTH = 4096
WIDTHS = ("num_classes", "stem", "block1", "block2", "block3", "head")
MID_WIDTHS = ("mid1", "mid2", "mid3")


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class LPRNetConfig:
    num_classes: int = 68
    dropout: float = 0.5
    # Channel widths of the stem and the three blocks; the published model is (64, 128, 256, 256). Pruning
    # changes them, so they are part of the config rather than constants.
    stem: int = 64
    block1: int = 128
    block2: int = 256
    block3: int = 256
    head: int = 256
    # Inner widths of the three blocks; 0 means block // 4, as published.
    mid1: int = 0
    mid2: int = 0
    mid3: int = 0
    # Channels kept by the two channel-strided max pools; empty means every 2nd of block1 / every 4th of block3,
    # as published. Pruning the block outputs renumbers them.
    pool1_keep: tuple[int, ...] = ()
    pool2_keep: tuple[int, ...] = ()
    # Channel counts that divide the context energy of the four taps (stem, block1, block3, classes); 0 means the
    # tap's own width. Removing all-zero channels keeps the published counts so the normalisation is unchanged.
    context_divisors: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self):
        for name in (*WIDTHS, *MID_WIDTHS):
            value, low = getattr(self, name), 0 if name in MID_WIDTHS else 1
            if not _is_integer(value) or not low <= value <= MAX_WIDTH:
                raise InputError(f"{name} must be an integer from {low} to {MAX_WIDTH}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise InputError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        # Lists arrive from JSON / torch.load; keep the dataclass hashable and comparable.
        for name in ("pool1_keep", "pool2_keep", "context_divisors"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not all(_is_integer(i) for i in values):
                raise InputError(f"{name} must be a list of integers, got {values!r}")
            object.__setattr__(self, name, tuple(int(i) for i in values))
        if len(self.context_divisors) != 4 or any(not 0 <= d <= MAX_WIDTH for d in self.context_divisors):
            raise InputError(f"context_divisors must be 4 integers from 0 to {MAX_WIDTH}, got "
                             f"{self.context_divisors!r}")
        for name in ("pool1_keep", "pool2_keep"):
            width = self.block1 if name == "pool1_keep" else self.block3
            if any(not 0 <= i < width for i in getattr(self, name)):
                raise InputError(f"{name} indexes outside the {width} channels it selects from")

    @property
    def pool1_channels(self) -> tuple[int, ...]:
        return self.pool1_keep or tuple(range(0, self.block1, 2))

    @property
    def pool2_channels(self) -> tuple[int, ...]:
        return self.pool2_keep or tuple(range(0, self.block3, 4))

    @property
    def divisors(self) -> tuple[int, int, int, int]:
        own = (self.stem, self.block1, self.block3, self.num_classes)
        return tuple(d or w for d, w in zip(self.context_divisors, own))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values, where: str) -> LPRNetConfig:
        """The config a file holds (`to_dict`'s form); an InputError naming `where` for anything else."""
        if not isinstance(values, dict):
            raise InputError(f"{where}: the model config is a {type(values).__name__}, not a dict")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in values if key not in known)
        if unknown:
            raise InputError(f"{where}: unknown model config key(s) {', '.join(unknown)}")
        try:
            return cls(**values)
        except InputError as error:
            raise InputError(f"{where}: model config: {error}") from None


class ChannelSelectMaxPool(nn.Module):
    """The original's `MaxPool3d(kernel=(1,3,3), stride=(s,1,w))` on a 4-D tensor treats channels as depth: it
    keeps every s-th channel, then max-pools 3x3. Written as a channel selection and a MaxPool2d: the same
    arithmetic, ~10x faster on CPU than PyTorch's MaxPool3d, exportable to ONNX as ordinary ops, and prunable
    (the kept channels are a list, so removing channels before it just renumbers them)."""

    def __init__(self, keep: tuple[int, ...], in_channels: int, width_stride: int):
        super().__init__()
        self.keep = tuple(keep)
        stride = self.keep[1] - self.keep[0] if len(self.keep) > 1 else 1
        self.slice = (self.keep[0], self.keep[-1] + 1, stride)
        # A strided slice when the kept channels are evenly spaced (as published), an index select otherwise.
        self.is_slice = self.keep == tuple(range(*self.slice))
        self.register_buffer("index", torch.tensor(self.keep, dtype=torch.long), persistent=False)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=(1, width_stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_slice:
            start, stop, step = self.slice
            return self.pool(x[:, start:stop:step])
        return self.pool(x.index_select(1, self.index))


class SmallBasicBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int, ch_mid: int | None = None):
        super().__init__()
        mid = ch_mid if ch_mid is not None else ch_out // 4
        self.block = nn.Sequential(
            nn.Conv2d(ch_in, mid, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=(3, 1), padding=(1, 0)),
            nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=(1, 3), padding=(0, 1)),
            nn.ReLU(),
            nn.Conv2d(mid, ch_out, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def normalise_context(f: torch.Tensor, channels: int) -> torch.Tensor:
    """f / mean(f^2), the mean per sample (the original takes it over the whole batch) and over `channels`
    channels: f's own count, or more when all-zero channels were removed from f."""
    energy = f.pow(2).sum(dim=(1, 2, 3), keepdim=True) / (channels * f.shape[2] * f.shape[3])
    return f / energy


class LPRNet(nn.Module):
    def __init__(self, config: LPRNetConfig = LPRNetConfig()):
        super().__init__()
        self.config = c = config
        self.backbone = nn.Sequential(
            nn.Conv2d(3, c.stem, kernel_size=3, stride=1),  # 0: (N,3,24,94) -> (N,64,22,92)
            nn.BatchNorm2d(c.stem),
            nn.ReLU(),  # 2: context tap
            nn.MaxPool2d(kernel_size=3, stride=1),  # -> (N,64,20,90)
            SmallBasicBlock(c.stem, c.block1, c.mid1 or None),  # 4: -> (N,128,20,90)
            nn.BatchNorm2d(c.block1),
            nn.ReLU(),  # 6: context tap
            ChannelSelectMaxPool(c.pool1_channels, c.block1, width_stride=2),  # 7: every 2nd -> (N,64,18,44)
            SmallBasicBlock(len(c.pool1_channels), c.block2, c.mid2 or None),  # 8: -> (N,256,18,44)
            nn.BatchNorm2d(c.block2),
            nn.ReLU(),  # 10
            SmallBasicBlock(c.block2, c.block3, c.mid3 or None),  # 11
            nn.BatchNorm2d(c.block3),
            nn.ReLU(),  # 13: context tap
            ChannelSelectMaxPool(c.pool2_channels, c.block3, width_stride=2),  # 14: every 4th -> (N,64,16,21)
            nn.Dropout(c.dropout),
            nn.Conv2d(len(c.pool2_channels), c.head, kernel_size=(1, 4), stride=1),  # 16: -> (N,256,16,18)
            nn.BatchNorm2d(c.head),
            nn.ReLU(),  # 18
            nn.Dropout(c.dropout),
            nn.Conv2d(c.head, c.num_classes, kernel_size=(13, 1), stride=1),  # 20: -> (N,C,4,18)
            nn.BatchNorm2d(c.num_classes),
            nn.ReLU(),  # 22: context tap
        )
        context_channels = c.stem + c.block1 + c.block3 + c.num_classes
        self.container = nn.Sequential(nn.Conv2d(context_channels, c.num_classes, kernel_size=1))
        self.pool_stem = nn.AvgPool2d(kernel_size=5, stride=5)  # (20,90) -> (4,18)
        self.pool_block = nn.AvgPool2d(kernel_size=(4, 10), stride=(4, 2))  # (18,44) -> (4,18)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,24,94) normalised BGR -> logits (N, num_classes, 18)."""
        taps = []
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i in CONTEXT_TAPS:
                taps.append(x)
        stem, block1, block3, classes = taps
        d_stem, d_block1, d_block3, d_classes = self.config.divisors
        context = [
            normalise_context(self.pool_stem(stem), d_stem),
            normalise_context(self.pool_stem(block1), d_block1),
            normalise_context(self.pool_block(block3), d_block3),
            normalise_context(classes, d_classes),
        ]
        x = self.container(torch.cat(context, dim=1))  # (N,C,4,18)
        return x.mean(dim=2)
