"""train_ctc's `keep_start`: fine-tuning validates the starting weights and returns them when no later validation
beats them (the published weights lose their accuracy in train mode, see train.py); distillation towards a teacher,
alone or added to the label loss; TrainConfig without defaults, epochs as steps, and what every fine-tuning shares."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from lprnet.model.data import list_images, load_folder
from lprnet.optimize.prune import prune_channels, remove_dead_channels
from lprnet.optimize.train import (
    MAX_BRIGHTNESS_SHIFT,
    MAX_CONTRAST_CHANGE,
    MAX_NOISE,
    TrainConfig,
    augment,
    distill,
    distillation_loss,
    epoch_steps,
    finetune_config,
    train_ctc,
)
from lprnet.runtime.evaluate import evaluate
from lprnet.runtime.torch_runtime import TorchPredictor
from tests.conftest import as_input


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def wrecking_config(keep_start: bool) -> TrainConfig:
    # A learning rate of 1 ruins the weights within a step; validation after steps 2 and 4.
    return TrainConfig(steps=4, batch_size=8, lr=1.0, weight_decay=1e-4, eval_every=2, patience=10, seed=0, threads=2,
                       keep_start=keep_start)


def test_a_fine_tuning_that_no_validation_prefers_returns_the_starting_weights(random_model, latin,
                                                                                images_and_labels):
    start = copy.deepcopy(random_model)
    kept = copy.deepcopy(random_model)
    logged = []  # what a stage's DVCLive curves receive: each validation as it is made
    history = train_ctc(kept, latin, images_and_labels, images_and_labels, wrecking_config(keep_start=True),
                        on_validation=logged.append)
    assert [row["step"] for row in history] == [0, 2, 4] and logged == history
    assert history[0]["val_accuracy"] == evaluate(TorchPredictor(start, latin), *images_and_labels)["accuracy"]
    assert max(row["val_accuracy"] for row in history[1:]) <= history[0]["val_accuracy"]  # ruined, as intended
    assert states_equal(kept, start)
    # Without keep_start the first validation's weights are the earliest it can return: not the start.
    trained = copy.deepcopy(random_model)
    history = train_ctc(trained, latin, images_and_labels, images_and_labels, wrecking_config(keep_start=False))
    assert [row["step"] for row in history] == [2, 4] and not states_equal(trained, start)


def test_pruned_published_weights_keep_their_accuracy_through_fine_tuning(published_weights, published_images):
    from lprnet.model.checkpoint import load_model

    model, alphabet = load_model(published_weights)
    model = prune_channels(remove_dead_channels(model)[0], 0.3)
    images, labels = load_folder(list_images(published_images)[:160], alphabet)
    train, validation = (images[:96], labels[:96]), (images[96:], labels[96:])
    start = evaluate(TorchPredictor(copy.deepcopy(model), alphabet), *validation)["accuracy"]
    history = train_ctc(model, alphabet, train, validation,
                        TrainConfig(steps=6, batch_size=16, lr=5e-4, weight_decay=1e-4, eval_every=3, patience=10,
                                    seed=0, threads=2, keep_start=True))
    final = evaluate(TorchPredictor(model, alphabet), *validation)["accuracy"]
    assert history[0]["val_accuracy"] == start > 0.8
    assert final == max(row["val_accuracy"] for row in history) >= start


def test_distillation_loss_is_zero_only_where_the_distributions_agree():
    torch.manual_seed(0)
    teacher = torch.randn(4, 35, 18)
    assert distillation_loss(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(teacher + 5.0, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax shift
    assert distillation_loss(torch.randn(4, 35, 18), teacher, 2.0).item() > 0.1


def test_distillation_moves_the_student_towards_the_teacher_without_reading_labels_or_batch_norm(
        random_model, latin, images_and_labels):
    teacher = remove_dead_channels(random_model)[0]
    student = prune_channels(teacher, 0.5)
    x = as_input(images_and_labels[0])

    def gap(model):
        with torch.no_grad():
            return distillation_loss(model.eval()(x), teacher(x), 2.0).item()

    before = gap(student)
    statistics = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    config = TrainConfig(steps=12, batch_size=8, lr=3e-3, weight_decay=1e-4, eval_every=6, patience=10, seed=0,
                         threads=2, keep_start=False)
    images, labels = images_and_labels
    distilled = copy.deepcopy(student)
    logged = []
    history = distill(distilled, teacher, latin, images_and_labels, images_and_labels, config,
                      on_validation=logged.append)
    assert [row["step"] for row in history] == [6, 12] and logged == history
    assert gap(distilled) < 0.8 * before
    assert all(torch.equal(distilled.state_dict()[k], v) for k, v in statistics.items())  # frozen batch norm
    # Other labels, same training: the labels only reach validation.
    relabelled = copy.deepcopy(student)
    distill(relabelled, teacher, latin, (images, labels[::-1]), images_and_labels, config)
    assert states_equal(relabelled, distilled)


def test_a_distillation_term_in_label_fine_tuning_moves_the_student_towards_the_teacher(random_model, latin,
                                                                                        images_and_labels):
    teacher = remove_dead_channels(random_model)[0]
    student = prune_channels(teacher, 0.5)
    x = as_input(images_and_labels[0])

    def gap(model):
        # Measured as trained, on batch statistics: the random model's running statistics are deliberately far from
        # them, and a few steps move them only part of the way. Same dropout in every model (same seed).
        torch.manual_seed(0)
        with torch.no_grad():
            return distillation_loss(copy.deepcopy(model).train()(x), teacher(x), 2.0).item()

    config = TrainConfig(steps=12, batch_size=8, lr=3e-3, weight_decay=1e-4, eval_every=6, patience=10, seed=0,
                         threads=2, keep_start=False)
    labels_only = copy.deepcopy(student)
    train_ctc(labels_only, latin, images_and_labels, images_and_labels, config)
    mixed = copy.deepcopy(student)
    history = train_ctc(mixed, latin, images_and_labels, images_and_labels, config, teacher=teacher,
                        distill_alpha=10.0)
    assert [row["step"] for row in history] == [6, 12]
    assert gap(mixed) < 0.8 * min(gap(student), gap(labels_only))
    # Batch norm trains (unlike distill's): its running statistics move.
    assert not all(torch.equal(mixed.state_dict()[k], v) for k, v in student.state_dict().items() if "running" in k)
    # A weight of 0 is label fine-tuning, step for step.
    zero = copy.deepcopy(student)
    train_ctc(zero, latin, images_and_labels, images_and_labels, config, teacher=teacher, distill_alpha=0.0)
    assert states_equal(zero, labels_only)


def test_augment_keeps_the_shape_and_moves_pixels_within_its_bounds(images_and_labels):
    torch.manual_seed(0)
    x = as_input(images_and_labels[0])
    jittered = augment(x)
    assert jittered.shape == x.shape and not torch.equal(jittered, x)
    # Contrast, brightness and 4 sigma of noise bound how far a value can move from the value range.
    bound = (1 + MAX_CONTRAST_CHANGE) * x.abs().max() + MAX_BRIGHTNESS_SHIFT + 4 * MAX_NOISE
    assert jittered.abs().max() <= bound


def test_every_train_setting_is_stated_by_its_caller():
    assert all(field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
               for field in dataclasses.fields(TrainConfig))
    with pytest.raises(ValueError, match="TrainConfig.steps"):
        dataclasses.replace(wrecking_config(keep_start=False), steps=0)


def test_epochs_count_a_last_partial_batch_and_give_at_least_one_step():
    assert epoch_steps(2.0, 100, 32) == 8  # 4 batches per epoch
    assert epoch_steps(0.5, 200, 16) == 6  # 13 batches per epoch, 6.5 rounded to even
    assert epoch_steps(0.01, 100, 32) == 1


def test_a_fine_tuning_validates_five_times_keeps_the_start_and_never_stops_early():
    config = finetune_config(steps=300, batch_size=16, lr=5e-4, seed=3, threads=2)
    assert (config.steps, config.eval_every, config.keep_start, config.seed) == (300, 60, True, 3)
    assert config.patience > config.steps
    assert finetune_config(steps=3, batch_size=16, lr=5e-4, seed=0, threads=2).eval_every == 1
