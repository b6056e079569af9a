"""One evaluation loop for every backend: plate and character accuracy of a Predictor on labelled images.

Each image is scored independently of its batch mates (the model's context normalisation is per sample), so the
batch size changes speed, not results. Does not time anything (see bench.py).
"""

from __future__ import annotations

import numpy as np

from lprnet.errors import InputError
from lprnet.model.data import to_network_input
from lprnet.model.decode import greedy_decode
from lprnet.runtime.predictor import Predictor


def predict_logits(predictor: Predictor, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N,24,94,3) uint8 BGR images -> (N,C,18) logits."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    return np.concatenate([predictor(to_network_input(images[start:start + batch_size]))
                           for start in range(0, len(images), batch_size)])


def texts_from_logits(logits: np.ndarray, alphabet) -> list[str]:
    return [alphabet.decode(seq) for seq in greedy_decode(logits, alphabet.blank)]


def predict_texts(predictor: Predictor, images: np.ndarray, batch_size: int = 64) -> list[str]:
    """(N,24,94,3) uint8 BGR images -> N plate strings."""
    return texts_from_logits(predict_logits(predictor, images, batch_size), predictor.alphabet)


def edit_distance(a: str, b: str) -> int:
    # Levenshtein distance of two short strings; ten lines here beat a dependency for 7-character plates.
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def score(predictions: list[str], labels) -> dict:
    """accuracy: exact plate matches; char_accuracy: 1 - (total edit distance / total label characters)."""
    labels = [str(label) for label in labels]
    if not labels:
        raise InputError("no labelled images to score")
    exact = sum(p == t for p, t in zip(predictions, labels, strict=True))
    errors = sum(edit_distance(p, t) for p, t in zip(predictions, labels))
    return {
        "accuracy": exact / len(labels),
        "char_accuracy": max(0.0, 1 - errors / sum(len(t) for t in labels)),
        "num_images": len(labels),
    }


def evaluate(predictor: Predictor, images: np.ndarray, labels, batch_size: int = 64) -> dict:
    return score(predict_texts(predictor, images, batch_size), labels)
