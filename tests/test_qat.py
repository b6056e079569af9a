"""Quantization-aware fine-tuning (lprnet.qat): starts where post-training quantization is, trains, and converts to
the same int8 artifact format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lprnet.optimize.calibrate import calibrate, observers, prepare_observed
from lprnet.optimize.qat import activation_fake_quants, convert_qat, prepare_qat
from lprnet.optimize.quantize import load_quantized, load_statistics, quantize, rebuild_graph, save_quantized
from lprnet.optimize.train import TrainConfig, train_ctc
from lprnet.runtime.torch_runtime import TorchPredictor
from tests.conftest import as_input


@pytest.fixture
def calibration_images(latin):
    from lprnet.model.synth import render_split

    images, _ = render_split(seed=3, split="calib", count=16, symbols=latin.symbols)
    return images


@pytest.fixture
def calibration(random_model, calibration_images):
    return calibrate(random_model, calibration_images, "histogram")


def relative_error(logits: torch.Tensor, reference: torch.Tensor) -> float:
    return float((logits - reference).abs().max() / reference.abs().max())


def test_qat_starts_from_the_calibrated_ranges(random_model, calibration):
    observed = prepare_observed(random_model, calibration["method"])
    load_statistics(observed, calibration["observers"])
    expected = {name: float(observer.calculate_qparams()[0]) for name, observer in observers(observed).items()}
    prepared = prepare_qat(random_model, calibration)
    scales = {name: float(fake_quant.scale) for name, fake_quant in activation_fake_quants(prepared).items()}
    assert len(scales) > 10 and scales.keys() == expected.keys()
    for name, scale in scales.items():
        assert scale == pytest.approx(expected[name], rel=1e-6), name


def test_untrained_qat_converts_to_the_post_training_model(random_model, calibration, calibration_images,
                                                           images_and_labels):
    prepared = prepare_qat(random_model, calibration)
    prepared.eval()
    with torch.no_grad():  # one pass, so that the weight fake-quantizers have seen their weights
        prepared(as_input(calibration_images))
    converted = convert_qat(prepared)
    ptq = quantize(random_model, calibration)
    assert list(converted.state_dict()) == list(ptq.state_dict())
    assert [(n, type(m)) for n, m in converted.named_modules() if n] == [
        (n, type(m)) for n, m in ptq.named_modules() if n]
    assert str(converted.graph) == str(ptq.graph)
    x = as_input(images_and_labels[0])
    with torch.inference_mode():
        expected, logits = ptq(x), converted(x)
    # Same weights and nearly the same ranges (the pass moved them 1 % towards that batch's extremes).
    assert relative_error(logits, expected) < 0.05


def test_qat_fine_tunes_and_round_trips_through_the_int8_artifact(tmp_path, random_model, latin, calibration,
                                                                  images_and_labels):
    from lprnet.model.synth import render_split

    train = render_split(seed=4, split="train", count=32, symbols=latin.symbols)
    prepared = prepare_qat(random_model, calibration)
    before = {k: v.clone() for k, v in prepared.state_dict().items()}
    history = train_ctc(prepared, latin, train, images_and_labels,
                        TrainConfig(steps=4, batch_size=8, lr=1e-3, weight_decay=1e-4, eval_every=2, patience=10,
                                    seed=0, threads=2, keep_start=False))
    assert len(history) == 2 and all(np.isfinite(row["train_loss"]) for row in history)
    changed = [k for k, v in prepared.state_dict().items() if v.dtype.is_floating_point
               and not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)
    model = convert_qat(prepared)
    assert list(model.state_dict()) == list(rebuild_graph(random_model.config).state_dict())
    path = tmp_path / "qat.pt"
    save_quantized(path, random_model.config, latin, model, calibration)
    loaded, _ = load_quantized(path)
    x = as_input(images_and_labels[0])
    with torch.inference_mode():
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert TorchPredictor(loaded, latin)(x.numpy()).shape == (len(x), latin.num_classes, 18)


def test_qat_refuses_a_calibration_of_other_weights(random_model, calibration):
    other = type(random_model)(random_model.config)
    with pytest.raises(ValueError, match="different weights"):
        prepare_qat(other, calibration)
