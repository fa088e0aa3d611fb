"""Model-free measurements on toy-world images (a held-out 'classifier' that knows the data generator's rules)."""
from __future__ import annotations

import torch

from reneg.core.toy_world.data import BACKGROUNDS, COLOURS, POSITIONS


def parse_caption(caption: str) -> dict:
    """``"a red circle on the left, white background"`` -> its fields."""
    body, _, bg = caption.partition(", ")
    words = body.split()
    return {"colour": words[1], "shape": words[2], "position": " ".join(words[3:]),
            "background": bg.replace(" background", "")}


def foreground(images: torch.Tensor, backgrounds: list[str], threshold: float = 0.3) -> torch.Tensor:
    """``[B,H,W]`` mask of pixels far from the caption's background colour."""
    bg = torch.tensor([BACKGROUNDS[b] for b in backgrounds], dtype=torch.float32).view(-1, 3, 1, 1) / 255
    return (images - bg).abs().amax(1) > threshold


def classify(images: torch.Tensor, captions: list[str]) -> list[dict]:
    """Per image: the dominant foreground colour (nearest of COLOURS) and the position of the foreground centroid."""
    fields = [parse_caption(c) for c in captions]
    mask = foreground(images, [f["background"] for f in fields])
    names = list(COLOURS)
    palette = torch.tensor([COLOURS[n] for n in names], dtype=torch.float32) / 255
    xs = torch.arange(images.shape[-1], dtype=torch.float32) * 32 / images.shape[-1]
    centres = {k: v for k, v in POSITIONS.items()}
    out = []
    for img, m in zip(images, mask):
        if m.sum() < 4:
            out.append({"colour": None, "position": None})
            continue
        pix = img.permute(1, 2, 0)[m]
        colour = names[int(torch.cdist(pix, palette).argmin(1).bincount(minlength=len(names)).argmax())]
        cx = float((m.float().sum(0) * xs).sum() / m.sum())
        position = min(centres, key=lambda k: abs(centres[k] - cx))
        out.append({"colour": colour, "position": position})
    return out


def caption_accuracy(images: torch.Tensor, captions: list[str]) -> float:
    """Share of images whose colour AND position match their caption."""
    preds = classify(images, captions)
    ok = [p["colour"] == parse_caption(c)["colour"] and p["position"] == parse_caption(c)["position"]
          for p, c in zip(preds, captions)]
    return sum(ok) / len(ok)

