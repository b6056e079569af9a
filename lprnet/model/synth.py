"""The synthetic plate renderer: 7 characters on a plate, then the camera's damage.

Each image is a pure function of (seed, index), so a split renders the same bytes on any machine with the pinned
Pillow and NumPy, and any slice of it can be rendered alone. Uses only Pillow's bundled font so that nothing
outside the repo is needed. Does not write files or read params (see lprnet/pipeline/data_step.py).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from lprnet.errors import InputError
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH

PLATE_LENGTH = 7
SCALE = 4  # render at 4x and downsample, as a camera does
CANVAS = (INPUT_WIDTH * SCALE, INPUT_HEIGHT * SCALE)

# (background, ink) pairs: white/black, yellow/black, blue/white, green/white, black/white.
PLATE_COLOURS = [
    ((235, 235, 230), (20, 20, 20)),
    ((235, 200, 40), (15, 15, 15)),
    ((20, 60, 170), (240, 240, 240)),
    ((30, 120, 60), (240, 240, 240)),
    ((25, 25, 25), (230, 230, 230)),
]


@dataclass(frozen=True)
class SynthConfig:
    """Strength of each corruption; the defaults make a task that LPRNet learns but does not find trivial."""
    max_perspective: float = 0.05  # corner jitter as a fraction of the plate size
    max_rotation_deg: float = 3.0
    max_blur: float = 0.8  # Gaussian radius in output pixels
    max_noise: float = 12.0  # std of additive Gaussian noise, 0-255 scale
    jpeg_quality: tuple[int, int] = (30, 95)
    colour_jitter: float = 0.25


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _perspective_coefficients(src: np.ndarray, dst: np.ndarray) -> tuple[float, ...]:
    """Coefficients for PIL's PERSPECTIVE transform mapping output corners `dst` back to input corners `src`."""
    rows = []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return tuple(np.linalg.solve(np.array(rows, dtype=np.float64), src.reshape(-1)).tolist())


def random_text(rng: np.random.Generator, symbols: str, length: int = PLATE_LENGTH) -> str:
    return "".join(symbols[i] for i in rng.integers(0, len(symbols), size=length))


def render_plate(text: str, rng: np.random.Generator, config: SynthConfig = SynthConfig()) -> np.ndarray:
    """Render `text` as a (24, 94, 3) uint8 BGR image."""
    width, height = CANVAS
    background, ink = PLATE_COLOURS[rng.integers(len(PLATE_COLOURS))]
    jitter = 1 + config.colour_jitter * rng.uniform(-1, 1, size=3)
    background = tuple(int(np.clip(c * j, 0, 255)) for c, j in zip(background, jitter))
    image = Image.new("RGB", CANVAS, background)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.7:
        draw.rectangle([3, 3, width - 4, height - 4], outline=ink, width=int(rng.integers(2, 6)))

    # Lay the characters out one by one so spacing and size vary like real plates.
    font_size = int(rng.integers(60, 76))
    gap = rng.uniform(2, 10)
    widths = [draw.textlength(c, font=_font(font_size)) for c in text]
    fill = rng.uniform(0.72, 0.86)  # share of the plate width the text takes: all of it stays in view
    font_size = int(font_size * min(1.0, fill * width / (sum(widths) + gap * (len(text) - 1))))
    font = _font(font_size)
    widths = [draw.textlength(c, font=font) for c in text]
    total = sum(widths) + gap * (len(text) - 1)
    x = (width - total) / 2 + rng.uniform(-6, 6)
    y = height / 2 + rng.uniform(-5, 5)
    for char, w in zip(text, widths):
        draw.text((x, y), char, fill=ink, font=font, anchor="lm")
        x += w + gap

    # Perspective: jitter the four corners, plus a small rotation.
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    jittered = corners + rng.uniform(-1, 1, size=(4, 2)) * config.max_perspective * np.array([width, height])
    angle = np.deg2rad(rng.uniform(-1, 1) * config.max_rotation_deg)
    centre = np.array([width / 2, height / 2])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    jittered = (jittered - centre) @ rotation.T + centre
    surround = tuple(int(c) for c in rng.integers(0, 256, 3))
    image = image.transform(CANVAS, Image.Transform.PERSPECTIVE, _perspective_coefficients(jittered, corners),
                            resample=Image.Resampling.BILINEAR, fillcolor=surround)

    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, config.max_blur) * SCALE))
    image = image.resize((INPUT_WIDTH, INPUT_HEIGHT), Image.Resampling.BILINEAR)

    pixels = np.asarray(image, dtype=np.float32)
    contrast = 1 + config.colour_jitter * rng.uniform(-1, 1)
    brightness = 40 * config.colour_jitter * rng.uniform(-1, 1)
    pixels = (pixels - 128) * contrast + 128 + brightness
    pixels += rng.normal(0, rng.uniform(0, config.max_noise), size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(*config.jpeg_quality)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        rgb = np.asarray(decoded.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


SPLIT_IDS = {"train": 0, "calib": 1, "test": 2}


def _render_range(seed: int, split: str, start: int, stop: int, symbols: str, config: SynthConfig):
    labels, images = [], np.empty((stop - start, INPUT_HEIGHT, INPUT_WIDTH, 3), dtype=np.uint8)
    for i in range(start, stop):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        labels.append(random_text(rng, symbols))
        images[i - start] = render_plate(labels[-1], rng, config)
    return images, labels


def render_split(seed: int, split: str, count: int, symbols: str, config: SynthConfig = SynthConfig(),
                 workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Render `count` plates of one split: (N,24,94,3) uint8 BGR images and their (N,) label strings.

    Image i depends only on (seed, split, i), so the result is the same for any number of workers."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    if split not in SPLIT_IDS:
        raise InputError(f"unknown split {split!r}; valid: {', '.join(SPLIT_IDS)}")
    chunk = 500
    ranges = [(start, min(start + chunk, count)) for start in range(0, count, chunk)]
    images = np.empty((count, INPUT_HEIGHT, INPUT_WIDTH, 3), dtype=np.uint8)
    labels: list[str] = []
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=count, desc=f"render {split}", unit="img", mininterval=2) as progress:
        futures = [pool.submit(_render_range, seed, split, a, b, symbols, config) for a, b in ranges]
        for (a, b), future in zip(ranges, futures):
            images[a:b], chunk_labels = future.result()
            labels += chunk_labels
            progress.update(b - a)
    return images, np.array(labels, dtype=f"<U{PLATE_LENGTH}")
