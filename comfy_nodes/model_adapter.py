"""A :class:`~..core.model_boundary.DiffusionBackend` over ComfyUI's MODEL, VAE (and optional CLIP).

Only imported inside a running ComfyUI (it imports ``comfy``). Why it looks the way it does:

* ComfyUI executes every node under ``torch.inference_mode()``; its weights and every tensor handed between nodes
  are inference tensors, which autograd refuses to save for backward. So the backend is built and used under
  ``torch.inference_mode(False)``: :func:`prepared` loads the models with ``load_models_gpu`` (LoRA and other
  weight patches applied, full load), then clones the UNet's and the VAE's parameters once into normal
  tensors and calls the modules through ``torch.func.functional_call`` with those clones. The clones cost about one
  extra UNet + VAE copy in memory for the life of the node run.
* The UNet is called directly in the DDPM parametrisation (``x_t``, discrete timestep ``t``), which is what SD1.x /
  SD2.x networks compute: for ComfyUI's ``EPS``/``V_PREDICTION`` samplings ``calculate_input(σ, x) = x_t``
  and ``timestep(σ) = t``, so :attr:`prediction_type` is the network's own (``epsilon`` or ``v_prediction``) and
  the engine's DDIM math is the same as with the diffusers backend. ``alphas_cumprod`` comes from the (possibly
  object-patched, e.g. by the ModelSamplingDiscrete node) ``model_sampling.sigmas``: ᾱ = 1/(1+σ²).
* Decoding uses ``vae.first_stage_model.decode(model.process_latent_out(x0))`` (differentiable), not
  ``VAE.decode`` (which preallocates, copies, may tile and returns BHWC).
* ``model_options`` patches (attention/CFG hooks set by other nodes) are not applied on this path; weight patches
  (LoRA, merges) are, because they live in the loaded weights.
* **PixArt-α** (``comfy.model_base.PixArt`` with ``image_model: pixart_alpha``): the transformer
  (``comfy.ldm.pixart.pixartms.PixArtMS``) is called as ComfyUI's ``apply_model`` calls it: discrete timestep,
  ``c_crossattn`` as context, and the micro-conditions ``c_size = [[H·8, W·8]]`` / ``c_ar = [[H/W]]`` that
  ``PixArt.extra_conds`` adds (ComfyUI's sampler passes ``noise.shape·8`` as width/height); its ``forward``
  already returns the ε half of the learned-sigma output. ComfyUI passes no attention mask, so the engine's
  ``[B, 120, 4096]`` contexts (mask in-band, :func:`~..core.pixart_backend.attention_mask_of`) are run on their
  attended rows only, rows with the same mask together (see :mod:`.pixart`). Prompts are encoded with the
  graph's T5 (its CLIP input) once, before training, and padded with zero rows to 120.
* **SDXL** (``comfy.model_base.SDXL`` and its smaller family members, e.g. Segmind-Vega, SSD-1B, KOALA): the
  negatives and prompts are the engine's packed ``[B, 78, 2048]`` (:mod:`~..core.sdxl_backend`); the UNet gets
  context = the first 77 rows and ``y`` built by the model's own ``encode_adm`` (what ComfyUI's sampler calls:
  ``pooled_output`` + the size/crop embedding of ``width = W·8``, ``height = H·8``, crop 0, target = size) from
  the pooled row, differentiably.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch.func import functional_call

from ..core.errors import RenegError
from ..core.pixart_backend import FAMILY as PIXART_FAMILY
from ..core.pixart_backend import attention_mask_of
from ..core.sdxl_backend import pack as pack_sdxl, unpack as unpack_sdxl
from .conditioning import fit_tokens
from .pixart import T5_WIDTH, full_rows

log = logging.getLogger("reneg")

#: Token count of one CLIP chunk; ComfyUI encodes longer prompts as several chunks.
CHUNK_TOKENS = 77


class _DecodeOnly(torch.nn.Module):
    """Exposes ``first_stage_model.decode`` as ``forward`` so ``functional_call`` can swap its parameters."""

    def __init__(self, first_stage_model: torch.nn.Module):
        super().__init__()
        self.inner = first_stage_model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(z)


def _clone_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Normal (non-inference) copies of a module's parameters and buffers."""
    return {name: t.detach().clone() for name, t in list(module.named_parameters()) + list(module.named_buffers())}


def prediction_type_of(model_sampling) -> str:
    """``"epsilon"`` / ``"v_prediction"`` for ComfyUI's discrete SD samplings; a clear error otherwise."""
    import comfy.model_sampling as ms

    if not isinstance(model_sampling, ms.ModelSamplingDiscrete):
        raise RenegError(f"ReNeg supports SD1.x/SD2.x models with a discrete DDPM schedule; this model uses "
                         f"{type(model_sampling).__name__}. Load an SD1.x or SD2.x checkpoint.")
    unsupported = tuple(getattr(ms, n) for n in ("EDM", "X0", "IMG_TO_IMG", "CONST", "COSMOS_RFLOW") if hasattr(ms, n))
    if isinstance(model_sampling, unsupported):
        raise RenegError(f"Unsupported model sampling {type(model_sampling).__name__}: ReNeg needs an epsilon- or "
                         "v-prediction SD1.x/SD2.x model.")
    if isinstance(model_sampling, ms.V_PREDICTION):
        return "v_prediction"
    if isinstance(model_sampling, ms.EPS):
        return "epsilon"
    raise RenegError(f"Unknown prediction type for {type(model_sampling).__name__}.")


def is_pixart(model) -> bool:
    """True for ComfyUI's PixArt MODEL (α or Σ: both are ``comfy.model_base.PixArt``)."""
    base = getattr(model, "model", None)
    if base is None:
        return False
    import comfy.model_base

    return isinstance(base, comfy.model_base.PixArt)


class ComfyBackend:
    """SD1.x/SD2.x, SDXL or PixArt-α MODEL + VAE (+ CLIP/T5 for prompt encoding) of a running ComfyUI, with
    cloned frozen weights.

    Build it with :func:`prepared` (which also loads the models onto the device) and use it inside that block.
    """

    def __init__(self, model, vae, clip=None, name: str = "comfyui"):
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        self.model, self.vae, self.clip, self.name = model, vae, clip, name
        base = model.model
        self._base = base
        self._unet = base.diffusion_model
        cfg = base.model_config.unet_config
        self.pixart = is_pixart(model)
        self.sdxl = is_sdxl(model)
        if self.pixart:
            if cfg.get("image_model") != "pixart_alpha":
                raise RenegError(f"This PixArt MODEL is {cfg.get('image_model')!r} (ComfyUI detects PixArt-Σ, and "
                                 "PixArt-α checkpoints without micro-conditions, as pixart_sigma): ReNeg supports "
                                 "PixArt-α (e.g. PixArt-XL-2-1024-MS), SD1.x/SD2.x and SDXL.")
            self.family = PIXART_FAMILY
        elif not isinstance(self._unet, UNetModel):
            raise RenegError(f"ReNeg needs an SD1.x/SD2.x/SDXL UNet or PixArt-α; this MODEL is a "
                             f"{type(self._unet).__name__} ({type(base).__name__}). Load an SD1.x, SD2.x, SDXL or "
                             "PixArt-α checkpoint.")
        # SDXL's adm (pooled + size embedding) is built by the model's own encode_adm (see model_output)
        elif (base.adm_channels and not self.sdxl) or getattr(base, "concat_keys", ()) or cfg.get("in_channels", 4) != 4:
            raise RenegError(f"{type(base).__name__} needs extra inputs (SDXL refiner/unCLIP/inpaint/upscale "
                             "models): ReNeg supports plain text-to-image SD1.x/SD2.x and SDXL checkpoints.")
        else:
            self.family = "sdxl" if self.sdxl else "sd"
        if vae is None or getattr(vae, "first_stage_model", None) is None:
            raise RenegError("The VAE input is empty or invalid: connect the checkpoint's VAE (or a VAE loader).")
        self.context_dim = (int(self._unet.y_embedder.y_proj.fc1.weight.shape[1]) if self.pixart
                            else int(cfg["context_dim"]))
        self.latent_channels = int(base.latent_format.latent_channels)
        self.vae_scale_factor = int(getattr(vae, "downscale_ratio", 8))
        # get_model_object sees object patches (e.g. the ModelSamplingDiscrete node's v-prediction/zsnr)
        self._sampling = model.get_model_object("model_sampling")
        self.prediction_type = prediction_type_of(self._sampling)
        self._unet_params: dict[str, torch.Tensor] | None = None
        self._vae_params: dict[str, torch.Tensor] | None = None
        self._decoder = _DecodeOnly(vae.first_stage_model)
        self._prompt_cache: dict[str, torch.Tensor] = {}

    # --- DiffusionBackend properties -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.model.load_device)

    @property
    def dtype(self) -> torch.dtype:
        return self._base.manual_cast_dtype or self._base.get_dtype()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        sigmas = self._sampling.sigmas.detach().to("cpu", torch.float64)
        return (1.0 / (1.0 + sigmas ** 2)).float()

    # --- weights -------------------------------------------------------------------------------------------------
    def load(self) -> "ComfyBackend":
        """Load MODEL and VAE fully onto their device (patches applied) and clone their weights once."""
        import comfy.model_management as mm

        mm.load_models_gpu([self.model, self.vae.patcher], force_full_load=True)
        self._unet_params = _clone_tensors(self._unet)
        # the whole VAE (not only its decoder): parameter names differ between VAE classes (e.g. TAESD)
        self._vae_params = {f"inner.{k}": v for k, v in _clone_tensors(self.vae.first_stage_model).items()}
        return self

    def release(self) -> None:
        """Drop the cloned weights (called when the node is done)."""
        self._unet_params = self._vae_params = None

    def _require_loaded(self) -> None:
        if self._unet_params is None:
            raise RuntimeError("ComfyBackend used outside `prepared(...)`: call load() first.")

    # --- DiffusionBackend methods --------------------------------------------------------------------------------
    def model_output(self, latents: torch.Tensor, timestep, context: torch.Tensor) -> torch.Tensor:
        """UNet output for DDPM latents ``x_t`` at discrete ``timestep`` (ε or v, the model's own units)."""
        self._require_loaded()
        dtype, device = self.dtype, self.device
        t = torch.as_tensor(timestep, device=device, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(latents.shape[0])
        if self.pixart:
            return self._pixart_output(latents.to(device, dtype), t, context.to(device, dtype))
        kwargs = {"context": context.to(device, dtype), "transformer_options": {}}
        if self.sdxl:
            ctx, pooled = unpack_sdxl(context)
            kwargs["context"] = ctx.to(device, dtype)
            kwargs["y"] = self.sdxl_adm(pooled, latents.shape[-2] * 8, latents.shape[-1] * 8).to(device, dtype)
        out = functional_call(self._unet, self._unet_params, (latents.to(device, dtype), t), kwargs)
        return out.float()

    def sdxl_adm(self, pooled: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """SDXL's ``y`` ``[B, 2816]`` for pooled ``[B, 1280]`` at an image of ``height`` x ``width``, from the
        model's ``encode_adm`` with the arguments ComfyUI's sampler gives it (``comfy/samplers.py:
        encode_model_conds``: width/height = latent size · 8; crop 0 and target = size by default)."""
        return self._base.encode_adm(pooled_output=pooled, width=int(width), height=int(height),
                                     device=pooled.device)

    def cache_prompts(self, prompts: Sequence[str]) -> None:
        """PixArt: encode the prompts not cached yet with the T5 (CPU fp32 cache), so training never calls the
        4.7B encoder again after its first step (ComfyUI's model management may then offload it)."""
        for p in dict.fromkeys(prompts):
            if p not in self._prompt_cache:
                self._prompt_cache[p] = full_rows(encode_t5(self.clip, p), "The CLIP input").to("cpu")

    def _pixart_output(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """ε of ComfyUI's PixArtMS with each row's attended context rows only (same mask = one call)."""
        masks = attention_mask_of(context)
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(masks.tolist()):
            groups.setdefault(tuple(m), []).append(i)
        h, w = x.shape[-2], x.shape[-1]
        parts, order = [], []
        for rows in groups.values():
            idx = torch.tensor(rows, device=x.device)
            n = len(rows)
            kwargs = {"context": context[idx][:, masks[rows[0]]],
                      "c_size": torch.tensor([[h * 8.0, w * 8.0]], device=x.device, dtype=x.dtype).expand(n, 2),
                      "c_ar": torch.tensor([[h / w]], device=x.device, dtype=x.dtype).expand(n, 1)}
            parts.append(functional_call(self._unet, self._unet_params, (x[idx], t[idx]), kwargs))
            order += rows
        out = torch.cat(parts)[torch.argsort(torch.tensor(order, device=x.device))]
        return out.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable decode of DDPM-space (scaled) latents to BCHW images in ``[0, 1]``."""
        self._require_loaded()
        z = self._base.process_latent_out(latents.float())
        image = functional_call(self._decoder, self._vae_params, (z.to(self.vae.device, self.vae.vae_dtype),))
        return ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0).to(latents.device)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[len(prompts), 77, D]`` from the connected CLIP (first 77-token chunk of long prompts); SDXL: packed
        ``[len(prompts), 78, 2048]`` (context + pooled); PixArt: ``[len(prompts), 120, 4096]`` from the connected
        T5, zero rows after each prompt's own tokens."""
        if self.pixart:
            self.cache_prompts(prompts)
            conds = [self._prompt_cache[p] for p in prompts]
        elif self.sdxl:  # packed [B, 78, 2048]: context + pooled of the SDXL CLIP
            conds = [pack_sdxl(*_sdxl_pair(encode_text(self.clip, p), p)) for p in prompts]
        else:
            conds = [encode_text(self.clip, p)[0] for p in prompts]
        return torch.cat(conds).to(self.device, self.dtype)


def _sdxl_pair(encoded: tuple[torch.Tensor, torch.Tensor | None], prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    cond, pooled = encoded
    if cond.shape[-1] != 2048 or pooled is None or pooled.shape[-1] != 1280:
        raise RenegError(f"The CLIP input encodes {prompt[:40]!r} to {list(cond.shape)} with pooled "
                         f"{None if pooled is None else list(pooled.shape)}; an SDXL MODEL needs its own CLIP "
                         "(CLIP-L + OpenCLIP-bigG: [1, 77, 2048] and pooled [1, 1280]). Connect the SDXL "
                         "checkpoint's CLIP.")
    return cond, pooled


def is_sdxl(model) -> bool:
    """True for ComfyUI's SDXL MODEL (``comfy.model_base.SDXL``: SDXL base and its fine-tunes, Segmind-Vega,
    SSD-1B, KOALA; not the refiner, whose conditioning differs)."""
    base = getattr(model, "model", None)
    if base is None:
        return False
    import comfy.model_base

    return isinstance(base, comfy.model_base.SDXL)


def encode_text(clip, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond ``[1,77,D]`` fp32 normal tensor, pooled ``[1,P]`` or None) for ``text`` with ComfyUI's CLIP."""
    if clip is None:
        raise RenegError("This needs a CLIP input (text encoder): connect the checkpoint's CLIP.")
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    if cond.shape[1] > CHUNK_TOKENS:
        log.warning("ReNeg: prompt %r is longer than one 77-token chunk; using the first chunk (as diffusers "
                    "and the ReNeg paper do).", text[:60])
    with torch.inference_mode(False):
        cond = fit_tokens(cond, CHUNK_TOKENS, "CLIP conditioning").detach().clone().float()
        pooled = pooled.detach().clone().float() if isinstance(pooled, torch.Tensor) else None
    return cond, pooled


def encode_t5(clip, text: str) -> torch.Tensor:
    """``[1, L, 4096]`` fp32 normal tensor: ``text`` encoded by a PixArt T5 CLIP exactly as *CLIP Text Encode* does
    (no padding: the rows diffusers attends to)."""
    if clip is None:
        raise RenegError("This needs a CLIP input (text encoder): connect PixArt's T5-XXL (Load CLIP, type pixart).")
    cond = clip.encode_from_tokens(clip.tokenize(text))
    if cond.shape[-1] != T5_WIDTH:
        raise RenegError(f"The CLIP input gives {cond.shape[-1]}-wide conditioning; a PixArt-α MODEL needs its "
                         "T5-XXL text encoder (Load CLIP, type pixart).")
    with torch.inference_mode(False):
        return cond.detach().clone().float()


def empty_conditioning(clip) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CLIP's empty-prompt conditioning: SD ``[1,77,D]`` + pooled (:func:`encode_text`); a PixArt T5
    ``[1, L, 4096]`` (its own tokens, unpadded) and None."""
    if clip is None:
        raise RenegError("This needs a CLIP input (text encoder): connect the checkpoint's CLIP (PixArt: its T5-XXL).")
    cond = clip.encode_from_tokens(clip.tokenize(""))
    if cond.shape[-1] == T5_WIDTH:
        with torch.inference_mode(False):
            return cond.detach().clone().float(), None
    return encode_text(clip, "")


@contextmanager
def prepared(model, vae, clip=None, name: str = "comfyui") -> Iterator[ComfyBackend]:
    """``with prepared(model, vae, clip) as backend:`` — gradients enabled, inference mode off, weights cloned."""
    with torch.inference_mode(False), torch.enable_grad():
        backend = ComfyBackend(model, vae, clip, name=name).load()
        try:
            yield backend
        finally:
            backend.release()
