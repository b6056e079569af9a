"""Greedy CTC decoding, scoring, and the evaluator's independence from batch size."""

from __future__ import annotations

import numpy as np
import pytest

from lprnet.model.decode import greedy_decode
from lprnet.runtime.evaluate import edit_distance, evaluate, predict_texts, score
from lprnet.runtime.torch_runtime import TorchPredictor


def one_hot_logits(columns: list[int], num_classes: int) -> np.ndarray:
    logits = np.zeros((1, num_classes, len(columns)), dtype=np.float32)
    logits[0, columns, np.arange(len(columns))] = 1
    return logits


def test_greedy_decode_collapses_repeats_and_drops_blanks():
    blank = 4
    assert greedy_decode(one_hot_logits([4, 1, 1, 4, 1, 2, 2, 4, 3], 5), blank) == [[1, 1, 2, 3]]
    assert greedy_decode(one_hot_logits([4, 4, 4], 5), blank) == [[]]


@pytest.mark.parametrize("a, b, distance", [("ABC", "ABC", 0), ("ABC", "AXC", 1), ("ABC", "AB", 1),
                                            ("", "ABC", 3), ("ABCD", "BCDE", 2)])
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance


def test_score_counts_plates_and_characters():
    result = score(["ABC1234", "ABC1235", "AB"], ["ABC1234", "ABC1234", "ABC1234"])
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["char_accuracy"] == pytest.approx(1 - (0 + 1 + 5) / 21)
    with pytest.raises(ValueError):
        score(["A"], ["A", "B"])


def test_batch_size_does_not_change_predictions(random_model, latin, images_and_labels):
    predictor = TorchPredictor(random_model, latin)
    images, labels = images_and_labels
    expected = predict_texts(predictor, images, batch_size=1)
    for batch in (5, 24, 64):
        assert predict_texts(predictor, images, batch_size=batch) == expected
    assert evaluate(predictor, images, labels, 7) == evaluate(predictor, images, labels, 1)
