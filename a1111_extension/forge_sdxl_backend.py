"""Forge's SDXL engine as a :class:`~..core.model_boundary.DiffusionBackend` (refinement and the tab on SDXL).

Forge (``backend/diffusion_engine/sdxl.py``, ``StableDiffusionXL``) conditions its UNet on
``{'crossattn': [B, 77·k, 2048], 'vector': [B, 2816]}`` with ``vector = cat(pooled [B, 1280], size embedding
[B, 1536])``; the size embedding is the engine's own ``embedder`` (``Timestep(256)``) of (height, width, crop top,
crop left, target height, target width) for the image being generated, crop from Settings (``sdxl_crop_top`` /
``sdxl_crop_left``). Its sampler passes them to ``KModel.apply_model(x, σ, c_crossattn=crossattn, y=vector)``
(``backend/sampling/condition.py``), which returns x0.

:class:`ForgeSDXLBackend` is :class:`~.model_adapter.ForgeBackend` (x0 at ``σ = √((1−ᾱ)/ᾱ)``, the VAE, the
inference-tensor preparation, gradient checkpointing) with the SDXL parts of the CLI's
:class:`~..core.sdxl_backend.SDXLBackend`: contexts are the engine's **packed** ``[B, 78, 2048]`` (context rows +
pooled row, :mod:`~..core.sdxl_backend`), the UNet's ``y`` is the packed pooled row + the engine's size embedding
for the latents' size, prompts are Forge's own conditioning packed, and :meth:`frozen_entries` is
:func:`~..core.sdxl_backend.packed_frozen_entries`.

Empty prompts: Forge zeroes an empty *negative* prompt's conditioning (``force_zero_negative_prompt``, as
diffusers' ``force_zeros_for_empty_prompt``). :meth:`encode_prompts` passes a plain list (not a negative-prompt
``SdConditioning``), so ``""`` is the null text encoded by both text encoders — the SDXL start rule of
``docs/sdxl.md``, the same as the CLI's and ComfyUI's.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

import torch

from ..core.errors import RenegError
from ..core.sdxl_backend import CONTEXT_DIM, POOLED_DIM, PackedSDXLNegative, check_packed_chunks, pack, unpack
from .model_adapter import ForgeBackend, out_of_place


def check_forge_sdxl(sd_model: Any) -> None:
    """Refuse Forge engines that are not SDXL base-type (the refiner: bigG only, 1280-wide; no size embedder)."""
    for attr in ("embedder", "text_processing_engine_l", "text_processing_engine_g", "get_learned_conditioning"):
        if not hasattr(sd_model, attr):
            raise RenegError(f"The loaded SDXL-type model ({type(sd_model).__name__}) has no '{attr}': ReNeg's SDXL "
                             "support covers SDXL base and its fine-tunes (CLIP-L + OpenCLIP-bigG), not the SDXL "
                             "refiner. Load an SDXL base-type checkpoint to refine or train.")


class ForgeSDXLBackend(PackedSDXLNegative, ForgeBackend):
    """DiffusionBackend over Forge's ``StableDiffusionXL`` engine (``shared.sd_model``); packed SDXL contexts."""

    sdxl = True

    def __init__(self, sd_model: Any, name: Optional[str] = None):
        check_forge_sdxl(sd_model)
        super().__init__(sd_model, name=name)
        if self.context_dim != CONTEXT_DIM:
            raise RenegError(f"'{self.name}' has {self.context_dim}-wide cross-attention (SDXL base: {CONTEXT_DIM}); "
                             "ReNeg's SDXL support covers SDXL base and its fine-tunes, not the refiner.")
        self._size_cache: dict = {}

    # ------------------------------------------------------------------------------------ size embedding
    def _opts(self) -> Any:
        """The settings object the engine's own module reads (``from modules.shared import opts``)."""
        module = sys.modules.get(type(self.sd_model).__module__)
        opts = getattr(module, "opts", None)
        if opts is None:
            from modules import shared  # the webui's settings

            opts = shared.opts
        return opts

    def size_embedding(self, height: int, width: int) -> torch.Tensor:
        """``[1, 1536]``: what Forge's ``get_learned_conditioning`` puts in ``vector[:, 1280:]`` for an image of
        ``height`` x ``width`` (original = target size, crop from Settings), from the engine's own ``embedder``."""
        opts = self._opts()
        crop_h, crop_w = getattr(opts, "sdxl_crop_top", 0), getattr(opts, "sdxl_crop_left", 0)
        key = (int(height), int(width), crop_h, crop_w)
        cached = self._size_cache.get(key)
        if cached is None:
            embedder = self.sd_model.embedder
            with torch.inference_mode(False), torch.no_grad():
                values = (height, width, crop_h, crop_w, height, width)  # the engine's order
                parts = [embedder(torch.Tensor([v])) for v in values]
                cached = torch.flatten(torch.cat(parts)).unsqueeze(0).float()
            self._size_cache = {key: cached}  # sizes change rarely; keep one
        return cached

    def unet_inputs(self, latents: torch.Tensor, context: torch.Tensor) -> dict:
        """``c_crossattn`` = the packed context rows, ``y`` = cat(packed pooled row, the engine's size embedding
        for the latents' image size), as Forge's sampler builds them from its ``{'crossattn', 'vector'}``."""
        ctx, pooled = self._unpacked(context)
        f = self.vae_scale_factor
        size = self.size_embedding(latents.shape[-2] * f, latents.shape[-1] * f).to(pooled.device, pooled.dtype)
        y = torch.cat([pooled, size.expand(pooled.shape[0], -1)], dim=1)
        return {"c_crossattn": out_of_place(ctx.contiguous()), "y": out_of_place(y)}

    def _unpacked(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(context ``[B, 77·k, 2048]``, pooled ``[B, 1280]``) of a packed ``[B, 77·k + 1, 2048]`` (k = 1 for
        negatives; prompts over 75 tokens keep Forge's k chunks and the first chunk's pooled)."""
        check_packed_chunks(context, f"model '{self.name}'")
        return unpack(context, self.pooled_dim)

    # ------------------------------------------------------------------------------------------ prompts
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Forge's own SDXL conditioning packed: ``[B, 78, 2048]`` (``[B, 77·k + 1, 2048]`` for prompts over 75
        tokens), fp32 (Forge's text engines compute in fp32, as for SD). ``""`` is the encoded null text, not
        Forge's zeroed empty negative (see the module docstring)."""
        cond = self.sd_model.get_learned_conditioning(list(prompts))
        if not isinstance(cond, dict) or "crossattn" not in cond or "vector" not in cond:
            raise RenegError(f"'{self.name}' gave {type(cond).__name__} conditioning; an SDXL engine gives "
                             "{'crossattn', 'vector'}.")
        with torch.inference_mode(False):
            cross = cond["crossattn"].clone().to(device=self.device, dtype=torch.float32)
            pooled = cond["vector"][:, :POOLED_DIM].clone().to(device=self.device, dtype=torch.float32)
            return pack(cross, pooled)
