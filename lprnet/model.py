"""LPRNet, state-dict compatible with LPRNet_Pytorch (`backbone.N.*`, `container.0.*`).

One deliberate change from the original: the global-context normalisation divides each feature map by the mean
of its square *per sample*, not over the whole batch, so an image's logits do not depend on its batch mates.
At batch 1 the two are identical. This file does not load files (see artifacts.py) or train (see train.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

INPUT_HEIGHT, INPUT_WIDTH = 24, 94
SEQUENCE_LENGTH = 18  # logit columns produced for a 94-pixel-wide input

# Indices in `backbone` whose outputs feed the global context, and their channel counts before the classes.
CONTEXT_TAPS = (2, 6, 13, 22)


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

    def to_dict(self) -> dict:
        return asdict(self)


class ChannelStridedMaxPool(nn.Module):
    """The original's `MaxPool3d(kernel=(1,3,3), stride=(s,1,w))` on a 4-D tensor, which treats channels as depth:
    it keeps every s-th channel, then max-pools 3x3. Written as a slice and a MaxPool2d because that is the same
    arithmetic, ~10x faster on CPU than PyTorch's MaxPool3d, and exports to ONNX as ordinary ops."""

    def __init__(self, channel_stride: int, width_stride: int):
        super().__init__()
        self.channel_stride = channel_stride
        self.pool = nn.MaxPool2d(kernel_size=3, stride=(1, width_stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x[:, :: self.channel_stride])


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


def normalise_context(f: torch.Tensor) -> torch.Tensor:
    """f / mean(f^2) with the mean taken per sample (the original takes it over the whole batch)."""
    return f / f.pow(2).mean(dim=(1, 2, 3), keepdim=True)


class LPRNet(nn.Module):
    def __init__(self, config: LPRNetConfig = LPRNetConfig()):
        super().__init__()
        self.config = c = config
        self.backbone = nn.Sequential(
            nn.Conv2d(3, c.stem, kernel_size=3, stride=1),  # 0: (N,3,24,94) -> (N,64,22,92)
            nn.BatchNorm2d(c.stem),
            nn.ReLU(),  # 2: context tap
            nn.MaxPool2d(kernel_size=3, stride=1),  # -> (N,64,20,90)
            SmallBasicBlock(c.stem, c.block1),  # 4: -> (N,128,20,90)
            nn.BatchNorm2d(c.block1),
            nn.ReLU(),  # 6: context tap
            ChannelStridedMaxPool(channel_stride=2, width_stride=2),  # 7: -> (N,64,18,44)
            SmallBasicBlock(c.block1 // 2, c.block2),  # 8: -> (N,256,18,44)
            nn.BatchNorm2d(c.block2),
            nn.ReLU(),  # 10
            SmallBasicBlock(c.block2, c.block3),  # 11
            nn.BatchNorm2d(c.block3),
            nn.ReLU(),  # 13: context tap
            ChannelStridedMaxPool(channel_stride=4, width_stride=2),  # 14: -> (N,64,16,21)
            nn.Dropout(c.dropout),
            nn.Conv2d(c.block3 // 4, c.head, kernel_size=(1, 4), stride=1),  # 16: -> (N,256,16,18)
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
        context = [
            normalise_context(self.pool_stem(stem)),
            normalise_context(self.pool_stem(block1)),
            normalise_context(self.pool_block(block3)),
            normalise_context(classes),
        ]
        x = self.container(torch.cat(context, dim=1))  # (N,C,4,18)
        return x.mean(dim=2)
