"""LPRNet against the original LPRNet_Pytorch forward pass, and batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lprnet.model.checkpoint import load_model
from lprnet.model.data import list_images, load_folder
from lprnet.model.network import LPRNet

from .conftest import as_input


def original_forward(model: LPRNet, x: torch.Tensor) -> torch.Tensor:
    """LPRNet_Pytorch's forward, transcribed: MaxPool3d over channels and a batch-wide context mean."""
    pools = {3: nn.MaxPool3d((1, 3, 3), (1, 1, 1)), 7: nn.MaxPool3d((1, 3, 3), (2, 1, 2)),
             14: nn.MaxPool3d((1, 3, 3), (4, 1, 2))}
    keep = []
    for i, layer in enumerate(model.backbone.children()):
        x = pools[i](x) if i in pools else layer(x)
        if i in [2, 6, 13, 22]:
            keep.append(x)
    context = []
    for i, f in enumerate(keep):
        if i in [0, 1]:
            f = nn.AvgPool2d(kernel_size=5, stride=5)(f)
        if i == 2:
            f = nn.AvgPool2d(kernel_size=(4, 10), stride=(4, 2))(f)
        context.append(torch.div(f, torch.mean(torch.pow(f, 2))))
    return torch.mean(model.container(torch.cat(context, 1)), dim=2)


def test_batch_one_matches_the_original(random_model, images_and_labels):
    x = as_input(images_and_labels[0][:4])
    with torch.no_grad():
        for i in range(len(x)):
            ours, original = random_model(x[i:i + 1]), original_forward(random_model, x[i:i + 1])
            assert ours.shape == (1, random_model.config.num_classes, 18)
            torch.testing.assert_close(ours, original, rtol=1e-5, atol=1e-5)


def test_output_of_an_image_does_not_depend_on_its_batch(random_model, images_and_labels):
    x = as_input(images_and_labels[0])
    with torch.no_grad():
        batched = random_model(x)
        single = torch.cat([random_model(x[i:i + 1]) for i in range(len(x))])
        torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
        # The original does depend on its batch: the reason for the change.
        assert not torch.allclose(original_forward(random_model, x), single, atol=1e-4)


def test_published_weights_load_unchanged_and_batch_64_predicts_like_batch_1(published_weights, published_images):
    model, alphabet = load_model(published_weights)
    assert alphabet.name == "chinese68"
    raw = torch.load(published_weights, map_location="cpu", weights_only=True)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, raw[key]), key
    images, _ = load_folder(list_images(published_images)[:128], alphabet)
    x = as_input(images)
    with torch.no_grad():
        batch_64 = torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)])
        batch_1 = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
        original_1 = torch.cat([original_forward(model, x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batch_1, original_1, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch_64.argmax(1).numpy(), batch_1.argmax(1).numpy())
    torch.testing.assert_close(batch_64, batch_1, rtol=1e-4, atol=1e-4)


def test_wrong_architecture_is_refused_with_the_file_name(tmp_path, random_model):
    state = random_model.state_dict()
    del state["container.0.bias"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="broken.pth"):
        load_model(path)
