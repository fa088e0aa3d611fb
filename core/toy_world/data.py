"""TOY WORLD data: seed-deterministic captioned 32x32 scenes of one coloured shape, with controllable defects.

A scene is one shape (``circle``/``square``/``triangle``), one of four colours, a position and a background,
captioned as ``"a red circle on the left, white background"`` (72 captions). Defects (``blurry``, ``washed out``,
``cluttered``) are drawn independently per scene; the caption names a present defect only sometimes, so the
generator learns defects as part of the *unprompted* distribution -- which is what a negative can steer away
from. Everything is a pure function of ``(seed, index)`` (``random.Random``), so datasets are reproducible.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
POSITIONS = {"on the left": 8.5, "in the center": 16.0, "on the right": 23.5}
BACKGROUNDS = {"white": (240, 240, 240), "black": (20, 20, 20)}
SHAPE_RADIUS = 7.5
DEFECTS = ("blurry", "washed out", "cluttered")

#: Data recipe: chance that each defect is present, and that a present defect is named in the caption.
DEFECT_PROB = 0.3
DEFECT_MENTION_PROB = 0.4


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str
    background: str
    defects: tuple[str, ...] = ()
    jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)  #: dx, dy (pixels), size scale - 1
    clutter_seed: int = 0

    def caption(self) -> str:
        """The full caption without defect words (what a user prompts)."""
        return caption_of(self.shape, self.colour, self.position, self.background)

    def clean(self) -> "Scene":
        return replace(self, defects=())


def caption_of(shape: str, colour: str, position: str, background: str) -> str:
    return f"a {colour} {shape} {position}, {background} background"


def all_captions() -> list[str]:
    """Every full caption of the world (72), in a fixed order."""
    return [caption_of(s, c, p, b) for s in SHAPES for c in COLOURS for p in POSITIONS for b in BACKGROUNDS]


def sample_scene(rng: random.Random, defect_prob: float = DEFECT_PROB) -> Scene:
    defects = tuple(d for d in DEFECTS if rng.random() < defect_prob)
    return Scene(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(POSITIONS)),
                 rng.choice(list(BACKGROUNDS)), defects,
                 (rng.uniform(-1.0, 1.0), rng.uniform(-2.5, 2.5), rng.uniform(-0.1, 0.1)),
                 rng.randrange(2 ** 31))


def scene_at(seed: int, index: int, defect_prob: float = DEFECT_PROB) -> Scene:
    """The ``index``-th scene of dataset ``seed`` (independent of every other index)."""
    return sample_scene(random.Random(seed * 1_000_003 + index), defect_prob)


def training_caption(scene: Scene, rng: random.Random, field_drop: float = 0.2, caption_drop: float = 0.1,
                     defect_only: float = 0.06, mention: float = DEFECT_MENTION_PROB) -> str:
    """A caption as the generator sees it in training: sometimes empty (for CFG), sometimes partial, and naming
    each present defect with probability ``mention``."""
    u = rng.random()
    named = [d for d in scene.defects if rng.random() < mention]
    if u < caption_drop:
        return ""
    if u < caption_drop + defect_only:
        return ", ".join(scene.defects)
    keep = lambda: rng.random() >= field_drop  # noqa: E731
    words = ["a"] + ([scene.colour] if keep() else [])
    words.append(scene.shape if keep() else "shape")
    text = " ".join(words)
    if keep():
        text += f" {scene.position}"
    if keep():
        text += f", {scene.background} background"
    return ", ".join([text, *named])


def _triangle(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    return [(cx, cy - r), (cx - r * 0.95, cy + r * 0.8), (cx + r * 0.95, cy + r * 0.8)]


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """``[size, size, 3]`` uint8 image of ``scene`` (shapes drawn at 4x and downsampled: anti-aliased)."""
    from PIL import Image, ImageDraw, ImageFilter

    k = 4
    big = size * k
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    s = size / SIZE
    dx, dy, ds = scene.jitter
    cx, cy = (POSITIONS[scene.position] + dx) * s * k, (16.0 + dy) * s * k
    r = SHAPE_RADIUS * (1 + ds) * s * k
    colour = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif scene.shape == "square":
        q = r * 0.85
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=colour)
    else:
        draw.polygon(_triangle(cx, cy, r * 1.1), fill=colour)
    if "cluttered" in scene.defects:
        crng = random.Random(scene.clutter_seed)
        palette = list(COLOURS.values()) + [(250, 250, 250), (10, 10, 10), (200, 100, 220), (0, 200, 200)]
        for _ in range(crng.randint(5, 8)):
            x0, y0 = crng.uniform(0, big), crng.uniform(0, big)
            w = crng.uniform(2.0, 4.0) * s * k
            if crng.random() < 0.5:
                draw.rectangle([x0, y0, x0 + w, y0 + w], fill=crng.choice(palette))
            else:
                x1, y1 = x0 + crng.uniform(-6, 6) * s * k, y0 + crng.uniform(-6, 6) * s * k
                draw.line([x0, y0, x1, y1], fill=crng.choice(palette), width=int(1.5 * s * k))
    img = img.resize((size, size), Image.Resampling.BOX)
    if "blurry" in scene.defects:
        img = img.filter(ImageFilter.GaussianBlur(radius=1.8 * s))
    arr = np.asarray(img, dtype=np.float32)
    if "washed out" in scene.defects:
        arr = 0.35 * arr + 0.65 * 175.0
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in ``[0, 1]``."""
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0


def make_dataset(seed: int, n: int, defect_prob: float = DEFECT_PROB) -> tuple[list[Scene], torch.Tensor]:
    """``n`` scenes of dataset ``seed`` and their images as uint8 ``[n, 32, 32, 3]``."""
    scenes = [scene_at(seed, i, defect_prob) for i in range(n)]
    return scenes, torch.from_numpy(np.stack([render(sc) for sc in scenes]))


def split_prompts(n_train: int = 24, n_held_out: int = 12, seed: int = 1234) -> tuple[list[str], list[str]]:
    """Disjoint ReNeg training / held-out prompt lists drawn from :func:`all_captions` (fixed by ``seed``)."""
    caps = all_captions()
    random.Random(seed).shuffle(caps)
    return caps[:n_train], caps[n_train:n_train + n_held_out]
