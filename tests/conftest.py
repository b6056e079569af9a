from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lprnet.model.alphabet import get_alphabet
from lprnet.model.network import LPRNet, LPRNetConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "lprnet-pretrained"
PUBLISHED_WEIGHTS = SHARED / "Final_LPRNet_model.pth"
PUBLISHED_IMAGES = SHARED / "images"


def repo_params(section: str) -> dict:
    """The repository's params.yaml section as a dict: the one home of every default, for tests that build a params
    dataclass or write a params file of their own (override what the test is about, keep the rest)."""
    return dict(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))[section])


def params_from_repo(section: str, cls, **overrides):
    """`cls` (a params dataclass) from the repository's `section`, with `overrides`."""
    return cls(**{**repo_params(section), **overrides})


@pytest.fixture
def published_weights() -> Path:
    if not PUBLISHED_WEIGHTS.is_file():
        pytest.skip(f"{PUBLISHED_WEIGHTS} is absent")
    return PUBLISHED_WEIGHTS


@pytest.fixture
def published_images() -> Path:
    if not PUBLISHED_IMAGES.is_dir():
        pytest.skip(f"{PUBLISHED_IMAGES} is absent")
    return PUBLISHED_IMAGES


@pytest.fixture
def latin():
    return get_alphabet("latin")


@pytest.fixture
def random_model(latin) -> LPRNet:
    """A randomly initialised model with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(0)
    model = LPRNet(LPRNetConfig(num_classes=latin.num_classes))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def images_and_labels(latin):
    from lprnet.model.synth import render_split

    return render_split(seed=3, split="test", count=24, symbols=latin.symbols)


def as_input(images: np.ndarray) -> torch.Tensor:
    from lprnet.model.data import to_network_input

    return torch.from_numpy(to_network_input(images))


def main_constants(mod) -> list[np.ndarray]:
    """The tensor constants a Relax module's main function passes to its kernels and operators."""
    from tvm import ir, relax

    arrays = []

    def visit(expr):
        if isinstance(expr, ir.expr.Constant) and isinstance(expr.ty, relax.TensorType):
            arrays.append(expr.value.numpy())

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return arrays
