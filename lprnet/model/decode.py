"""Greedy CTC decoding: argmax per column, collapse repeats, drop blanks. No beam search, no language model."""

from __future__ import annotations

import numpy as np


def greedy_decode(logits: np.ndarray, blank: int) -> list[list[int]]:
    """(N, C, T) logits -> per image the list of class indices."""
    best = np.asarray(logits).argmax(axis=1)  # (N, T)
    decoded = []
    for row in best:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        decoded.append([int(c) for c in row[keep] if c != blank])
    return decoded
