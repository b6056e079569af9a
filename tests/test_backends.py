"""Every Predictor against the PyTorch reference: same logits, same accuracy, whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest

from lprnet.compile.onnx_export import export_onnx
from lprnet.model.checkpoint import save_model
from lprnet.runtime.evaluate import evaluate
from lprnet.runtime.predictor import example_input, load_predictor


@pytest.fixture(params=["torch", "onnxruntime"])
def predictor(request, tmp_path, random_model, latin):
    if request.param == "torch":
        path = tmp_path / "model.pt"
        save_model(path, random_model, latin)
    else:
        path = tmp_path / "model.onnx"
        export_onnx(random_model, latin, path)
    return load_predictor(path, threads=2)


def test_predictor_matches_the_pytorch_reference(predictor, random_model, latin):
    import torch

    assert predictor.alphabet == latin
    for batch in (1, 5):
        x = example_input(batch, seed=batch)
        with torch.no_grad():
            expected = random_model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(predictor(x), expected, atol=1e-4, rtol=1e-4)


def test_accuracy_does_not_depend_on_batch(predictor, images_and_labels):
    assert evaluate(predictor, *images_and_labels, batch_size=1) == evaluate(predictor, *images_and_labels, 10)
