"""CTC training, fine-tuning and distillation of LPRNet on in-memory splits.

`train_ctc` fits the labels, optionally plus a teacher model's per-frame output distributions (label fine-tuning with
a distillation term); `distill` fits the teacher's distributions alone, on augmented images. Both use
AdamW with a one-cycle learning-rate schedule, periodic validation on a held-out split (never the test split),
early stop when validation accuracy has not improved for `patience` checks, and the best weights restored at the
end (with `keep_start`, the starting weights compete too). Batches are in channels-last memory format, which
PyTorch's CPU convolutions run faster. `TrainConfig` is built by the stages from their params sections (it has no
defaults: every stage states every setting); `finetune_config` holds what every fine-tuning shares. Each validation's
history row also goes, as it is made, to an optional `on_validation` callback (the stages log it with DVCLive, see
lprnet/pipeline/training_log.py). Does not load or save files, does not read params.yaml and does not import DVCLive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from lprnet.model.alphabet import Alphabet
from lprnet.model.data import to_network_input
from lprnet.model.input_spec import SEQUENCE_LENGTH
from lprnet.model.network import LPRNet
from lprnet.runtime.evaluate import evaluate
from lprnet.runtime.torch_runtime import TorchPredictor


@dataclass(frozen=True)
class TrainConfig:
    steps: int  # optimizer steps (see epoch_steps for a number of epochs)
    batch_size: int
    lr: float  # the one-cycle schedule's peak
    weight_decay: float
    eval_every: int  # steps between validations (and the last step)
    patience: int  # validations without improvement before stopping
    seed: int  # batch order, dropout and augmentation
    threads: int
    # Validate the starting weights too (history row at step 0) and return them when no later validation beats
    # them, so that fine-tuning cannot leave a model worse on the validation split than it started.
    keep_start: bool

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "patience", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)!r}")


def epoch_steps(epochs: float, num_images: int, batch_size: int) -> int:
    """Optimizer steps for `epochs` passes over `num_images` in batches of `batch_size` (a last partial batch counts
    as a step), at least one."""
    return max(1, round(epochs * math.ceil(num_images / batch_size)))


# Images per forward pass of a validation: PyTorch's CPU convolutions run this model fastest per image at 8-16 (at
# 64 and more the activations leave the caches). Results do not depend on it.
VALIDATION_BATCH = 16

# Called with each history row as it is made, e.g. to log a curve that can be watched while training runs.
OnValidation = Callable[[dict], None]


# Fine-tuning (pruning, QAT) validates five times, never stops early and keeps the start when nothing beats it.
# Its weight decay is fixed here: the prune and quantize sections of params.yaml have no key for it.
FINETUNE_VALIDATIONS = 5
FINETUNE_WEIGHT_DECAY = 1e-4


def finetune_config(steps: int, batch_size: int, lr: float, seed: int, threads: int) -> TrainConfig:
    """The TrainConfig of a fine-tuning of `steps` steps from weights that are already good."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=FINETUNE_WEIGHT_DECAY,
                       eval_every=max(1, steps // FINETUNE_VALIDATIONS), patience=10**9, seed=seed, threads=threads,
                       keep_start=True)


def ctc_loss(logits: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor, blank: int):
    log_probs = logits.permute(2, 0, 1).log_softmax(2)  # (T, N, C)
    input_lengths = torch.full((logits.shape[0],), SEQUENCE_LENGTH, dtype=torch.long)
    return torch.nn.functional.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=blank,
                                        zero_infinity=True)


def encode_labels(labels, alphabet: Alphabet) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [alphabet.encode(str(label)) for label in labels]
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    return torch.tensor([c for e in encoded for c in e], dtype=torch.long), lengths


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence from the teacher's to the student's class distribution at `temperature`, per frame (dim 1 holds
    the classes), averaged over frames and images and scaled by temperature^2 so that gradients keep their size."""
    frames = student_logits.shape[0] * student_logits.shape[2]
    return torch.nn.functional.kl_div(student_logits.div(temperature).log_softmax(1),
                                      teacher_logits.div(temperature).log_softmax(1), log_target=True,
                                      reduction="sum") * temperature**2 / frames


# Distillation's input jitter, as shares of the image (shifts), radians, and the (x - 127.5) / 128 value scale.
# Why by hand: torchvision is not a dependency, and these few lines act on a whole float batch at once.
MAX_ROTATION = math.radians(4.0)
MAX_SCALE_CHANGE = 0.075
MAX_SHIFT = (0.04, 0.1)  # x, y
MAX_CONTRAST_CHANGE = 0.25
MAX_BRIGHTNESS_SHIFT = 0.2
MAX_NOISE = 0.08


def augment(images: torch.Tensor) -> torch.Tensor:
    """A random similarity transform, contrast, brightness and Gaussian noise per image, from torch's global RNG."""
    n, _, height, width = images.shape
    angle = (torch.rand(n) * 2 - 1) * MAX_ROTATION
    scale = 1 + (torch.rand(n) * 2 - 1) * MAX_SCALE_CHANGE
    shift_x, shift_y = ((torch.rand(n) * 2 - 1) * limit for limit in MAX_SHIFT)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid works in [-1, 1] coordinates on both axes: the aspect ratio enters the rotation's off-diagonal.
    theta = torch.stack([torch.stack([cos, -sin * height / width, shift_x], 1),
                         torch.stack([sin * width / height, cos, shift_y], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    images = torch.nn.functional.grid_sample(images, grid, padding_mode="border", align_corners=False)
    contrast = 1 + (torch.rand(n, 1, 1, 1) * 2 - 1) * MAX_CONTRAST_CHANGE
    brightness = (torch.rand(n, 1, 1, 1) * 2 - 1) * MAX_BRIGHTNESS_SHIFT
    noise = torch.randn(images.shape) * torch.rand(n, 1, 1, 1) * MAX_NOISE
    return images * contrast + brightness + noise


def train_ctc(model: LPRNet, alphabet: Alphabet, train: tuple[np.ndarray, np.ndarray],
              validation: tuple[np.ndarray, np.ndarray], config: TrainConfig, teacher: torch.nn.Module | None = None,
              distill_alpha: float = 0.0, temperature: float = 2.0, on_validation: OnValidation | None = None
              ) -> list[dict]:
    """Train `model` in place on the labels (CTC loss, batch norm in train mode); return the history, one row per
    validation (each also passed to `on_validation` as it is made).

    With a `teacher` and `distill_alpha` > 0, the loss adds `distill_alpha` times the distillation loss towards the
    teacher's per-frame outputs on the same images: a pruned model that starts at 0 % gets a target for every frame
    from its unpruned self, not only a plate text, and recovers in fewer steps; the labels keep it anchored to the
    truth where the teacher is wrong."""
    if teacher is not None:
        teacher = teacher.eval()
    distills = teacher is not None and distill_alpha > 0

    def batch_loss(x: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
        targets, lengths = encode_labels(labels, alphabet)
        model.train()
        logits = model(x)
        loss = ctc_loss(logits, targets, lengths, alphabet.blank)
        if distills:
            with torch.no_grad():
                target = teacher(x)
            loss = loss + distill_alpha * distillation_loss(logits, target, temperature)
        return loss

    return _fit(model, alphabet, train, validation, config, batch_loss, "train+distill" if distills else "train",
                on_validation)


def distill(model: LPRNet, teacher: torch.nn.Module, alphabet: Alphabet, train: tuple[np.ndarray, np.ndarray],
            validation: tuple[np.ndarray, np.ndarray], config: TrainConfig, temperature: float = 2.0,
            on_validation: OnValidation | None = None) -> list[dict]:
    """Train `model` in place to reproduce `teacher`'s per-frame outputs on augmented training images (the labels
    are not read: the teacher's distributions carry more than a plate text, and they make every augmented image
    a target); return the history, one row per validation (on the labels; each also passed to `on_validation`).

    Batch norm stays frozen (eval mode): the published weights' running statistics are far from their batch
    statistics on these plates, so in train mode the student would be fitted as another function than the one it
    computes in eval mode, where it is validated and used."""
    teacher = teacher.eval()

    def batch_loss(x: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
        x = augment(x)
        with torch.no_grad():
            target = teacher(x)
        model.eval()
        return distillation_loss(model(x), target, temperature)

    return _fit(model, alphabet, train, validation, config, batch_loss, "distill", on_validation)


def _fit(model: LPRNet, alphabet: Alphabet, train: tuple[np.ndarray, np.ndarray],
         validation: tuple[np.ndarray, np.ndarray], config: TrainConfig, batch_loss, description: str,
         on_validation: OnValidation | None) -> list[dict]:
    def record(row: dict) -> None:
        history.append(row)
        if on_validation is not None:
            on_validation(row)

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    generator = np.random.default_rng(config.seed)
    images, labels = train
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total_steps = config.steps
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps,
                                                   pct_start=0.15)
    history, best_accuracy, best_state, stale = [], -1.0, None, 0
    if config.keep_start:
        # Why: the published LPRNet weights carry batch-norm running statistics far from their batch statistics on
        # plates (the stem's are still mean 0, variance 1), so in train mode they compute another function, and a
        # short fine-tuning can end far below the accuracy it started from.
        start = evaluate(TorchPredictor(model, alphabet), *validation, batch_size=VALIDATION_BATCH)
        record({"step": 0, "epoch": 0.0, "train_loss": float("nan"), "val_accuracy": start["accuracy"],
                "val_char_accuracy": start["char_accuracy"], "lr": schedule.get_last_lr()[0]})
        best_accuracy = start["accuracy"]
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    running_loss, order = [], np.array([], dtype=int)
    progress = tqdm(range(1, total_steps + 1), desc=description, mininterval=5)
    for step in progress:
        if len(order) < config.batch_size:
            order = np.concatenate([order, generator.permutation(len(images))])
        batch, order = order[:config.batch_size], order[config.batch_size:]
        x = torch.from_numpy(to_network_input(images[batch])).to(memory_format=torch.channels_last)
        loss = batch_loss(x, labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running_loss.append(loss.item())
        if step % config.eval_every == 0 or step == total_steps:
            result = evaluate(TorchPredictor(model, alphabet), *validation, batch_size=VALIDATION_BATCH)
            row = {"step": step, "epoch": step / steps_per_epoch, "train_loss": float(np.mean(running_loss)),
                   "val_accuracy": result["accuracy"], "val_char_accuracy": result["char_accuracy"],
                   "lr": schedule.get_last_lr()[0]}
            record(row)
            running_loss = []
            progress.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row['val_accuracy']:.3f}")
            if result["accuracy"] > best_accuracy:
                best_accuracy, stale = result["accuracy"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= config.patience:
                    progress.write(f"early stop at step {step}: no improvement in {stale} validations")
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format).eval()
    return history
