"""A1111's SDXL (an sgm ``DiffusionEngine``) as a :class:`~..core.model_boundary.DiffusionBackend`.

A1111 v1.10 loads SDXL checkpoints as ``sgm.models.diffusion.DiffusionEngine`` and makes them look like SD1.x
(``modules/sd_models_xl.py``): ``is_sdxl``, ``parameterization``, the fp32 ``alphas_cumprod`` of the DDPM schedule,
``apply_model(x, t, cond)`` = ``model(x, t, cond)`` (the raw UNet output for DDPM latents) and
``get_learned_conditioning(batch)`` returning ``{"crossattn": [B, 77·k, 2048], "vector": [B, 2816]}``.

The engine hands this backend the SDXL negative in the packed layout ``[B, 78, 2048]`` (context rows + pooled row,
:mod:`~..core.sdxl_backend`), as the CLI's ``SDXLBackend``. What is A1111-specific:

* ``vector`` = the pooled embedding + the **size/crop embedding of this generation**: original size and target
  size = the image's ``(height, width)``, crop = Settings' ``sdxl_crop_top`` / ``sdxl_crop_left`` — the inputs
  A1111's ``get_learned_conditioning`` gives the conditioner — embedded by the model's own size embedders
  (the conditioner's non-text ``ConcatTimestepEmbedderND`` modules, run through the conditioner's own ``forward``),
  so it equals the ``vector[:, 1280:]`` A1111 computes for the generation;
* prompts are encoded by the webui itself (emphasis, textual inversions, 75-token chunks; the pooled part from the
  first chunk, as A1111 does); a plain list is not a negative prompt, so ``""`` is the *encoded* empty text (core's
  SDXL null-text rule, ``docs/sdxl.md``), not the zeros A1111 samples an empty negative prompt with;
* decoding is ``first_stage_model.decode(x0 / scale_factor)`` in the VAE's own dtype with autocast off, as the
  webui decodes (``decode_first_stage`` is ``@torch.no_grad``); SDXL's VAE overflows in fp16, so a NaN image there
  is one clear error pointing to ``--no-half-vae``.

No webui import here: the webui values (dtypes, crop settings) are constructor arguments
(:func:`..runtime.current_backend` passes them); tested on a tiny ``DiffusionEngine`` from A1111's
``repositories/generative-models``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ..core.errors import RenegError
from ..core.sdxl_backend import CONTEXT_DIM, POOLED_DIM, PackedSDXLNegative, check_packed_chunks, pack, unpack
from .fp32 import fp32_module
from .model_adapter import PARAMETERIZATIONS, LdmBackend, _timesteps, context_dim_of

#: The conditioner input key of the text embedders (A1111: ``model.cond_stage_key``).
TEXT_KEY = "txt"


def is_sgm_model(sd_model: Any) -> bool:
    """True for an sgm ``DiffusionEngine`` (A1111's SDXL): it has a ``conditioner`` instead of a
    ``cond_stage_model`` of its own."""
    return getattr(sd_model, "is_sdxl", False) or hasattr(sd_model, "conditioner")


def _text_embedders(conditioner) -> list:
    return [e for e in conditioner.embedders if getattr(e, "input_key", None) == TEXT_KEY]


def _size_embedders(conditioner) -> list:
    return [e for e in conditioner.embedders if getattr(e, "input_key", None) != TEXT_KEY]


def check_sgm_model(sd_model: Any) -> None:
    """Raise :class:`RenegError` unless ``sd_model`` is an SDXL base-type ``DiffusionEngine`` ReNeg can refine."""
    for attr in ("apply_model", "model", "first_stage_model", "conditioner", "parameterization"):
        if not hasattr(sd_model, attr):
            raise RenegError(f"The loaded SDXL model ({type(sd_model).__name__}) has no '{attr}': not A1111's sgm "
                             "DiffusionEngine; ReNeg refinement cannot use it.")
    if sd_model.parameterization not in PARAMETERIZATIONS:
        raise RenegError(f"Unsupported parameterization {sd_model.parameterization!r}.")
    unet = sd_model.model.diffusion_model
    width = context_dim_of(unet)
    if width != CONTEXT_DIM or len(_text_embedders(sd_model.conditioner)) != 2:
        raise RenegError(f"ReNeg's SDXL support covers SDXL base and its fine-tunes; this SDXL-type model has "
                         f"{width}-wide text conditioning (SDXL base: CLIP-L + OpenCLIP-bigG, 2048), e.g. the "
                         "SDXL refiner. Load an SDXL base-type checkpoint to refine or train.")
    if getattr(sd_model, "is_sdxl_inpaint", False) or int(getattr(unet, "in_channels", 4)) != 4:
        raise RenegError("ReNeg refinement needs a text-to-image model; this is an SDXL inpainting checkpoint. "
                         "Switch to a plain SDXL checkpoint to refine; applying an embedding still works.")
    order = [getattr(e, "input_key", None) == TEXT_KEY for e in sd_model.conditioner.embedders]
    if order != sorted(order, reverse=True):
        raise RenegError("This SDXL model's conditioner lists a size/crop embedder before a text encoder; ReNeg "
                         "expects SDXL's layout (pooled text embedding first in 'vector').")


class SgmBackend(PackedSDXLNegative, LdmBackend):
    """DiffusionBackend over A1111's SDXL ``DiffusionEngine``; contexts are packed ``[B, 78, 2048]``.

    ``dtype`` / ``vae_dtype``: compute dtypes (A1111: ``devices.dtype_unet`` / ``devices.dtype_vae``; default the
    weights'). ``cond_dtype``: dtype of the size/crop inputs (A1111 builds them in ``devices.dtype``). ``crop``:
    ``(top, left)`` of Settings' ``sdxl_crop_top`` / ``sdxl_crop_left``. All weights stay frozen.
    """

    check_model = staticmethod(check_sgm_model)

    def __init__(self, sd_model: Any, name: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                 vae_dtype: Optional[torch.dtype] = None, cond_dtype: Optional[torch.dtype] = None,
                 crop: Sequence[int] = (0, 0)):
        super().__init__(sd_model, name=name, dtype=dtype, vae_dtype=vae_dtype)
        self.conditioner = sd_model.conditioner
        self.context_dim = CONTEXT_DIM
        self._cond_dtype = cond_dtype
        self.crop = (int(crop[0]), int(crop[1]))
        self._sizes: dict = {}

    # ------------------------------------------------------------------ conditioning
    def size_inputs(self, height: int, width: int, rows: int = 1) -> dict:
        """The conditioner inputs A1111's ``get_learned_conditioning`` gives the size/crop embedders for an image
        of ``height`` × ``width`` (original = target = the image size; crop from the settings)."""
        args = dict(device=self.device, dtype=self._cond_dtype or self.dtype)
        return {"original_size_as_tuple": torch.tensor([height, width], **args).repeat(rows, 1),
                "crop_coords_top_left": torch.tensor(list(self.crop), **args).repeat(rows, 1),
                "target_size_as_tuple": torch.tensor([height, width], **args).repeat(rows, 1)}

    @torch.no_grad()
    def size_embedding(self, height: int, width: int) -> torch.Tensor:
        """``[1, 1536]``: ``vector[:, 1280:]`` of this generation, from the model's own size/crop embedders run
        through its conditioner's ``forward`` (cached per size)."""
        key = (int(height), int(width), str(self.device))
        cached = self._sizes.get(key)
        if cached is not None:
            return cached
        conditioner = self.conditioner
        sub = type(conditioner).__new__(type(conditioner))
        torch.nn.Module.__init__(sub)
        sub.embedders = torch.nn.ModuleList(_size_embedders(conditioner))
        try:
            vector = sub(self.size_inputs(int(height), int(width)))["vector"]
        except KeyError as exc:
            raise RenegError(f"This SDXL model's conditioner needs the input {exc} that SDXL base does not have "
                             "(an SDXL refiner?); ReNeg's SDXL support covers SDXL base and its fine-tunes.") from exc
        label = getattr(self.unet, "label_emb", None)
        want = getattr(label[0][0], "in_features", None) if label is not None else None
        if want is not None and POOLED_DIM + vector.shape[-1] != int(want):
            raise RenegError(f"This SDXL model's UNet takes a {want}-wide vector, but pooled ({POOLED_DIM}) + its "
                             f"size embedding ({vector.shape[-1]}) is {POOLED_DIM + vector.shape[-1]}.")
        self._sizes = {key: vector}
        return vector

    def model_output(self, latents: torch.Tensor, timestep: torch.Tensor | int,
                     context: torch.Tensor) -> torch.Tensor:
        """Raw UNet output (eps or v) for packed contexts ``[B, 77·k + 1, 2048]`` through ``apply_model`` with the
        cond dict ``{"crossattn": context, "vector": cat(pooled, size embedding of this image)}``."""
        check_packed_chunks(context, f"model '{self.name}'")
        rows = latents.shape[0]
        t = _timesteps(timestep, rows, latents.device)
        ctx, pooled = unpack(context.to(self.dtype), self.pooled_dim)
        f = self.vae_scale_factor
        size = self.size_embedding(latents.shape[-2] * f, latents.shape[-1] * f).to(self.dtype)
        vector = torch.cat([pooled, size.expand(pooled.shape[0], -1)], dim=1)
        out = self.sd_model.apply_model(latents.to(self.dtype), t, {"crossattn": ctx.contiguous(), "vector": vector})
        return out.to(latents.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable ``first_stage_model.decode(x0 / scale_factor)`` to ``[0, 1]``, in the VAE's dtype with
        autocast off (as the webui decodes)."""
        z = latents.to(self.vae_dtype) / self.scale_factor
        with torch.autocast(device_type=z.device.type, enabled=False):
            image = self.vae.decode(z)
        if self.vae_dtype == torch.float16 and not torch.isfinite(image).all():
            raise RenegError("SDXL's VAE gave NaN in half precision (the stock SDXL VAE overflows in fp16). Restart "
                             "the webui with --no-half-vae (or select an fp16-fixed SDXL VAE).")
        return ((image.float() + 1.0) / 2.0).clamp(0, 1)

    def _conditioning(self, prompts: Sequence[str]) -> torch.Tensor:
        cond = self.sd_model.get_learned_conditioning(list(prompts))
        if not isinstance(cond, dict) or "crossattn" not in cond or "vector" not in cond:
            raise RenegError("The SDXL model's text conditioning is not {'crossattn', 'vector'}; cannot refine.")
        return pack(cond["crossattn"], cond["vector"][:, :POOLED_DIM])

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """The webui's own conditioning, packed: ``[B, 77·k + 1, 2048]`` (context + pooled row)."""
        return self._conditioning(prompts).to(self.dtype)

    @torch.no_grad()
    def encode_prompts_fp32(self, prompts: Sequence[str]) -> torch.Tensor:
        """Like :meth:`encode_prompts` with both text encoders computing in fp32 (cast for the call, put back
        untouched), e.g. the null-text start ``""`` of training."""
        with fp32_module(self.conditioner):
            return self._conditioning(prompts).float()
