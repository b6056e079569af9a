"""train_ctc's `keep_start`: fine-tuning validates the starting weights and returns them when no later validation
beats them (the published weights lost everything in train mode, see train.py)."""

from __future__ import annotations

import copy

import torch

from lprnet.backends import TorchPredictor
from lprnet.data import list_images, load_folder
from lprnet.evaluate import evaluate
from lprnet.prune import prune_channels, remove_dead_channels
from lprnet.train import TrainConfig, train_ctc


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def wrecking_config(keep_start: bool) -> TrainConfig:
    # A learning rate of 1 ruins the weights within a step; validation after steps 2 and 4.
    return TrainConfig(steps=4, batch_size=8, lr=1.0, eval_every=2, patience=10, threads=2, keep_start=keep_start)


def test_a_fine_tuning_that_no_validation_prefers_returns_the_starting_weights(random_model, latin,
                                                                                images_and_labels):
    start = copy.deepcopy(random_model)
    kept = copy.deepcopy(random_model)
    history = train_ctc(kept, latin, images_and_labels, images_and_labels, wrecking_config(keep_start=True))
    assert [row["step"] for row in history] == [0, 2, 4]
    assert history[0]["val_accuracy"] == evaluate(TorchPredictor(start, latin), *images_and_labels)["accuracy"]
    assert max(row["val_accuracy"] for row in history[1:]) <= history[0]["val_accuracy"]  # ruined, as intended
    assert states_equal(kept, start)
    # Without keep_start the first validation's weights are the earliest it can return: not the start.
    trained = copy.deepcopy(random_model)
    history = train_ctc(trained, latin, images_and_labels, images_and_labels, wrecking_config(keep_start=False))
    assert [row["step"] for row in history] == [2, 4] and not states_equal(trained, start)


def test_pruned_published_weights_keep_their_accuracy_through_fine_tuning(published_weights, published_images):
    from lprnet.artifacts import load_model

    model, alphabet = load_model(published_weights)
    model = prune_channels(remove_dead_channels(model)[0], 0.3)
    images, labels = load_folder(list_images(published_images)[:160], alphabet)
    train, validation = (images[:96], labels[:96]), (images[96:], labels[96:])
    start = evaluate(TorchPredictor(copy.deepcopy(model), alphabet), *validation)["accuracy"]
    history = train_ctc(model, alphabet, train, validation,
                        TrainConfig(steps=6, batch_size=16, lr=5e-4, eval_every=3, patience=10, threads=2,
                                    keep_start=True))
    final = evaluate(TorchPredictor(model, alphabet), *validation)["accuracy"]
    assert history[0]["val_accuracy"] == start > 0.8
    assert final == max(row["val_accuracy"] for row in history) >= start
