"""HPSv2 / HPSv2.1 reward, and the generic open_clip preference reward it is built on.

``score = 100 * cosine(image features, text features)`` of an open_clip CLIP, i.e. ``hpsv2.score`` x 100.

Weights (never downloaded by open_clip: the architecture is built with no pretrained tag):
  - HPSv2.1: ``HPS_v2.1_compressed.pt``, HPSv2.0: ``HPS_v2_compressed.pt``, both from the hub repo ``xswu/HPSv2``.
  - Pass the file (or its folder) as ``weights=``, or put it in ``$RENEG_REWARDS_DIR``, or let
    ``huggingface_hub`` fetch/find it in its cache. See ``weights.py``; missing -> ``MissingWeightsError``.
  - The file is ``{"state_dict": {name: tensor}}``; it is read with ``torch.load(weights_only=True)`` and
    loaded strictly into open_clip ``ViT-H-14`` (same 686 keys as the HPSv2 fork).
"""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import RenegError
from .cosine import CosineReward
from .preprocess import OPENAI_MEAN, OPENAI_STD, check_images, hps_preprocess
from .weights import freeze, load_state_dict_file, resolve_file

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"hpsv2.1": "HPS_v2.1_compressed.pt", "hpsv2": "HPS_v2_compressed.pt"}
HPS_ARCH = "ViT-H-14"


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device (no memory, no random init); buffers stay real."""
    def hook(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
        return None if param is None else nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    handle = nn.modules.module.register_module_parameter_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def build_open_clip(arch: str | Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None,
                    seed: int = 0) -> nn.Module:
    """open_clip ``CLIP`` from a built-in name (e.g. ``"ViT-H-14"``) or a config dict, never downloading.

    With ``state_dict`` the weights are loaded strictly (no random init is spent); without, the model is
    randomly initialised from ``seed`` (the global RNG is left untouched).
    """
    import open_clip

    cfg = open_clip.get_model_config(arch) if isinstance(arch, str) else dict(arch)
    if cfg is None:
        raise RenegError(f"Unknown open_clip architecture {arch!r}; valid: {open_clip.list_models()}.")
    cfg = copy.deepcopy(cfg)
    if cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise RenegError(f"open_clip architecture {arch!r} uses a custom text tower; only plain CLIP is supported.")
    if state_dict is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return freeze(open_clip.CLIP(**cfg))
    with _parameters_on_meta():
        model = open_clip.CLIP(**cfg)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise RenegError(f"Checkpoint does not fit open_clip {arch if isinstance(arch, str) else 'model'}: "
                         f"{str(e)[:800]}. Use the matching reward name/checkpoint.") from e
    return freeze(model)


class OpenClipReward(CosineReward):
    """``scale * cosine(image, text)`` of any open_clip CLIP (HPSv2 when wrapping the HPS ViT-H-14).

    Images go through ``preprocess(images, size)`` (default: HPS resize-longest + zero-pad + OpenAI
    normalisation) in torch, so the score is differentiable w.r.t. the pixels. Text features are cached per
    prompt (they need no gradient).
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[Sequence[str]], torch.Tensor], name: str,
                 scale: float = 100.0,
                 preprocess: Callable[..., torch.Tensor] = hps_preprocess) -> None:
        super().__init__()
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.name = name
        self.scale = scale
        self.preprocess = preprocess
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def logit_scale(self) -> float:
        return self.scale

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[B, D]`` of ``[0, 1]`` images; differentiable."""
        check_images(images)
        x = self.preprocess(images.to(self.device, torch.float32), self.image_size, OPENAI_MEAN, OPENAI_STD)
        return self.model.encode_image(x.to(self.dtype), normalize=True)


def load_hps(version: str = "hpsv2.1", weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> OpenClipReward:
    """HPSv2.1 (``"hpsv2.1"``) or HPSv2.0 (``"hpsv2"``) reward; ``weights``: checkpoint file or its folder."""
    import open_clip

    if version not in HPS_FILES:
        raise RenegError(f"Unknown HPS version {version!r}; valid: {sorted(HPS_FILES)}.")
    path = resolve_file(weights, HPS_FILES[version], HPS_REPO, f"HPS ({version})")
    model = build_open_clip(HPS_ARCH, load_state_dict_file(path))
    reward = OpenClipReward(model, open_clip.get_tokenizer(HPS_ARCH), name=version)
    return reward.to(device, dtype)
