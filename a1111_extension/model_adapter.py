"""A1111 / Forge implementations of :class:`~..core.model_boundary.DiffusionBackend`.

* :class:`LdmBackend` wraps A1111's ``shared.sd_model`` (an ``ldm`` ``LatentDiffusion``, SD1.x/SD2.x):
  ``apply_model(x_t, t, {"c_crossattn": [context]})`` gives the raw output in the model's ``parameterization``
  (``eps`` or ``v``); the schedule is ``alphas_cumprod_original`` (fp32; A1111 may downcast or rescale
  ``alphas_cumprod`` per generation); decoding is ``first_stage_model.decode(x0 / scale_factor)`` because
  ``decode_first_stage`` is ``@torch.no_grad``.
* :class:`ForgeBackend` wraps Forge's ``shared.sd_model.forge_objects``: its k-diffusion ``KModel.apply_model``
  returns x0 (``prediction_type = "sample"``) at ``sigma = √((1−ᾱ)/ᾱ)`` with input ``x_t/√ᾱ``. Forge loads
  weights under ``torch.inference_mode()``; :meth:`ForgeBackend.prepare_for_grad` replaces such inference
  tensors by normal clones so backward works.

Nothing here imports webui modules at import time; this module is tested on real ``ldm`` classes.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch

from ..core.errors import RenegError
from .fp32 import fp32_module


#: ldm ``parameterization`` -> DiffusionBackend ``prediction_type``
PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}

#: Module classes whose forward is recomputed in backward by :func:`gradient_checkpointing`
#: (UNet transformer/res blocks and VAE decoder res blocks of ldm, sgm and Forge).
CHECKPOINT_CLASSES = ("BasicTransformerBlock", "ResBlock", "ResnetBlock", "AttnBlock")


def context_dim_of(unet: torch.nn.Module) -> int:
    """Width of the cross-attention context, read from the first ``attn2.to_k`` (ldm/Forge naming)."""
    cd = getattr(unet, "context_dim", None)
    if isinstance(cd, int):
        return cd
    config = getattr(unet, "config", None)
    cd = config.get("context_dim") if isinstance(config, dict) else getattr(config, "context_dim", None)
    if isinstance(cd, int):
        return cd
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k") and isinstance(module, torch.nn.Linear):
            return int(module.in_features)
    raise RenegError("Could not find the UNet's cross-attention width (no attn2.to_k layer): this model "
                     "architecture is not supported by ReNeg refinement.")


def first_param(module: torch.nn.Module) -> torch.Tensor:
    for p in module.parameters():
        return p
    raise RenegError(f"{type(module).__name__} has no parameters.")


def _timesteps(timestep: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(timestep, device=device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"timestep has {t.numel()} entries for a batch of {batch}.")
    return t


@contextlib.contextmanager
def gradient_checkpointing(modules: Iterable[torch.nn.Module],
                           class_names: Sequence[str] = CHECKPOINT_CLASSES) -> Iterator[int]:
    """Recompute the forward of blocks named ``class_names`` during backward (per-instance, restored on exit).

    Yields how many blocks were wrapped. Outputs and gradients are unchanged; peak memory drops.
    """
    from torch.utils.checkpoint import checkpoint

    patched: list[torch.nn.Module] = []

    def wrapped(module, *args, **kwargs):
        if not torch.is_grad_enabled():
            return type(module).forward(module, *args, **kwargs)
        return checkpoint(type(module).forward, module, *args, use_reentrant=False, **kwargs)

    try:
        for root in modules:
            for m in root.modules():
                if type(m).__name__ in class_names and "forward" not in m.__dict__:
                    m.forward = functools.partial(wrapped, m)
                    patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


def model_context_dim(sd_model: Any) -> int:
    """Cross-attention width of the loaded webui model (A1111 ldm/sgm or Forge)."""
    if sd_model is None:
        raise RenegError("No Stable Diffusion model is loaded. Select a checkpoint first.")
    if is_forge_model(sd_model):
        return context_dim_of(sd_model.forge_objects.unet.model.diffusion_model)
    return context_dim_of(sd_model.model.diffusion_model)


class OutOfPlaceTensor(torch.Tensor):
    """A tensor whose ``x += y`` (``-=``, ``*=``, ``/=``) rebinds ``x`` to a new tensor instead of writing in place.

    Forge's UNet (an older ComfyUI copy) updates activations in place (``x += n`` after ``norm1(x)`` saved ``x``),
    which autograd rejects ("modified by an inplace operation"). Feeding the networks inputs of this class makes
    every derived activation one too (torch keeps the subclass through operations), so those updates become
    out-of-place with identical values. Explicit in-place methods (``add_``) are unaffected.
    """

    def __iadd__(self, other):
        return self + other

    def __isub__(self, other):
        return self - other

    def __imul__(self, other):
        return self * other

    def __itruediv__(self, other):
        return self / other


def out_of_place(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(OutOfPlaceTensor)


def plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor) if isinstance(t, OutOfPlaceTensor) else t


class LdmBackend:
    """DiffusionBackend over an ``ldm`` ``LatentDiffusion`` (A1111's ``shared.sd_model`` for SD1.x/SD2.x).

    ``dtype`` overrides the compute dtype (A1111: ``devices.dtype_unet``); ``vae_dtype`` likewise
    (``devices.dtype_vae``). All weights are left frozen; gradients flow only to ``context``. The plumbing (device,
    dtypes, schedule, scale factor, checkpointing) is shared with A1111's SDXL backend (``sgm_backend.SgmBackend``).
    """

    @staticmethod
    def check_model(sd_model: Any) -> None:
        check_ldm_model(sd_model)

    def __init__(self, sd_model: Any, name: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                 vae_dtype: Optional[torch.dtype] = None):
        self.check_model(sd_model)
        self.sd_model = sd_model
        self.unet = sd_model.model.diffusion_model
        self.vae = sd_model.first_stage_model
        info = getattr(sd_model, "sd_checkpoint_info", None)
        self.name = name or getattr(info, "name_for_extra", None) or type(sd_model).__name__
        self.prediction_type = PARAMETERIZATIONS[sd_model.parameterization]
        self.context_dim = context_dim_of(self.unet)
        self.latent_channels = int(getattr(self.unet, "in_channels", 4))
        decoder = getattr(self.vae, "decoder", None)
        self.vae_scale_factor = 2 ** (int(getattr(decoder, "num_resolutions", 4)) - 1)
        self._dtype = dtype
        self._vae_dtype = vae_dtype
        ac = getattr(sd_model, "alphas_cumprod_original", None)
        if ac is None:
            ac = sd_model.alphas_cumprod
        self._alphas_cumprod = ac.detach().float().cpu().clone()

    @property
    def device(self) -> torch.device:
        return first_param(self.unet).device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype or first_param(self.unet).dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return self._vae_dtype or first_param(self.vae).dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def scale_factor(self) -> float:
        return float(self.sd_model.scale_factor)

    def model_output(self, latents: torch.Tensor, timestep: torch.Tensor | int,
                     context: torch.Tensor) -> torch.Tensor:
        t = _timesteps(timestep, latents.shape[0], latents.device)
        cond = {"c_crossattn": [context.to(self.dtype)]}
        out = self.sd_model.apply_model(latents.to(self.dtype), t, cond)
        return out.to(latents.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latents.to(self.vae_dtype) / self.scale_factor)
        return ((image.float() + 1.0) / 2.0).clamp(0, 1)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """The webui's own text conditioning (A1111: emphasis, textual inversions, 75-token chunks: prompts
        over 75 tokens give ``[B, 77·k, D]``; the core runs such cond and the 77-token negative separately)."""
        cond = self.sd_model.get_learned_conditioning(list(prompts))
        if isinstance(cond, dict):
            cond = cond["crossattn"]
        return cond.to(self.dtype)

    @torch.no_grad()
    def encode_prompts_fp32(self, prompts: Sequence[str]) -> torch.Tensor:
        """Like :meth:`encode_prompts`, with the text encoder computing in fp32 (its half-precision weights are
        cast for the call and put back untouched), e.g. the null-text start of training."""
        with fp32_module(self.sd_model.cond_stage_model):
            cond = self.sd_model.get_learned_conditioning(list(prompts))
        if isinstance(cond, dict):
            cond = cond["crossattn"]
        return cond.float()

    def gradient_checkpointing(self):
        """Context manager: recompute UNet and VAE-decoder blocks in backward (less memory)."""
        return gradient_checkpointing([self.unet, self.vae])


def check_ldm_model(sd_model: Any) -> None:
    """Raise :class:`RenegError` when ``sd_model`` is not an SD1.x/SD2.x ``LatentDiffusion`` ReNeg can refine."""
    if getattr(sd_model, "is_sdxl", False) or hasattr(sd_model, "conditioner"):
        raise RenegError("ReNeg refinement supports SD1.x and SD2.x checkpoints; this is an SDXL model. "
                         "Load an SD1.x/SD2.x checkpoint (applying a matching embedding still works).")
    for attr in ("apply_model", "model", "first_stage_model", "parameterization"):
        if not hasattr(sd_model, attr):
            raise RenegError(f"The loaded model ({type(sd_model).__name__}) has no '{attr}': not an ldm "
                             "LatentDiffusion; ReNeg refinement needs an SD1.x/SD2.x checkpoint.")
    if sd_model.parameterization not in PARAMETERIZATIONS:
        raise RenegError(f"Unsupported parameterization {sd_model.parameterization!r}.")
    key = getattr(sd_model.model, "conditioning_key", "crossattn")
    if key != "crossattn":
        raise RenegError(f"ReNeg refinement needs a text-to-image model (conditioning 'crossattn'); this one "
                         f"uses '{key}' (inpainting / instruct / depth model). Switch to a plain SD1.x/SD2.x "
                         "checkpoint to refine; applying an embedding still works.")


def check_memory_flags(cmd_opts: Any) -> None:
    """Refuse ``--lowvram`` / ``--medvram``: their per-module offloading hooks break backpropagation."""
    for flag in ("lowvram", "medvram"):
        if getattr(cmd_opts, flag, False):
            raise RenegError(f"ReNeg refinement and training cannot run with --{flag} (the webui moves model "
                             "parts between CPU and GPU during the forward pass, which breaks gradients). "
                             f"Restart the webui without --{flag}; applying an embedding still works.")


def _clone_inference_tensors(module: torch.nn.Module) -> int:
    """Replace inference-mode parameters/buffers of ``module`` by normal clones; returns how many."""
    count = 0
    with torch.inference_mode(False):
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None and p.is_inference():
                    m._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                    count += 1
            for name, b in list(m._buffers.items()):
                if b is not None and b.is_inference():
                    m._buffers[name] = b.clone()
                    count += 1
    return count


class ForgeBackend:
    """DiffusionBackend over Forge's ``sd_model.forge_objects`` (SD1.x/SD2.x UNets; k-diffusion x0 output).

    SDXL: the subclass :class:`~.forge_sdxl_backend.ForgeSDXLBackend` (its :meth:`unet_inputs` adds ``y``)."""

    prediction_type = "sample"
    #: True in the SDXL subclass; this class refuses SDXL engines
    sdxl = False

    def __init__(self, sd_model: Any, name: Optional[str] = None):
        if getattr(sd_model, "is_sdxl", False) and not self.sdxl:
            raise RenegError("ReNeg refinement supports SD1.x and SD2.x checkpoints; this is an SDXL model.")
        fo = sd_model.forge_objects
        self.sd_model = sd_model
        self.unet_patcher = fo.unet
        self.kmodel = fo.unet.model
        self.vae_wrapper = fo.vae
        self.vae = fo.vae.first_stage_model
        self.unet = self.kmodel.diffusion_model
        info = getattr(sd_model, "sd_checkpoint_info", None)
        self.name = name or getattr(info, "name_for_extra", None) or type(sd_model).__name__
        self.context_dim = context_dim_of(self.unet)
        self.latent_channels = int(getattr(fo.vae, "latent_channels", 4))
        self.vae_scale_factor = int(getattr(fo.vae, "downscale_ratio", 8))
        with torch.inference_mode(False):
            self._alphas_cumprod = self.kmodel.predictor.alphas_cumprod.detach().float().cpu().clone()

    @property
    def device(self) -> torch.device:
        return first_param(self.unet).device

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.kmodel, "computation_dtype", None) or first_param(self.unet).dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    def prepare_for_grad(self) -> int:
        """Load UNet+VAE on the GPU and clone their inference tensors (call again after LoRA changes)."""
        from backend import memory_management  # Forge's package

        memory_management.load_models_gpu([self.unet_patcher, self.vae_wrapper.patcher])
        return _clone_inference_tensors(self.kmodel) + _clone_inference_tensors(self.vae)

    def model_output(self, latents: torch.Tensor, timestep: torch.Tensor | int,
                     context: torch.Tensor) -> torch.Tensor:
        t = _timesteps(timestep, latents.shape[0], torch.device("cpu"))
        a = self._alphas_cumprod[t].to(device=latents.device, dtype=torch.float32)
        sigma = ((1 - a) / a).sqrt()
        x_k = latents.float() / a.sqrt()[:, None, None, None]
        options = self.unet_patcher.model_options.get("transformer_options", {})
        x0 = self.kmodel.apply_model(out_of_place(x_k), sigma, transformer_options=options,
                                     **self.unet_inputs(latents, context))
        return plain(x0).to(latents.dtype)

    def unet_inputs(self, latents: torch.Tensor, context: torch.Tensor) -> dict:
        """The conditioning keyword arguments of ``KModel.apply_model`` for ``context`` (SD: ``c_crossattn``)."""
        return {"c_crossattn": out_of_place(context)}

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = self.vae.process_out(latents.to(device=self.vae_wrapper.device, dtype=self.vae_wrapper.vae_dtype))
        image = plain(self.vae.decode(out_of_place(z)))
        return ((image.float() + 1.0) / 2.0).clamp(0, 1)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Forge's own text encoding, already computed in fp32 whatever the weights' storage dtype (its CLIP runs
        forge operations with manual cast on fp32 token embeddings), so it also serves as the fp32 null-text start
        (``tests/test_a1111_forge_adapter.py`` checks this in Forge's venv)."""
        cond = self.sd_model.get_learned_conditioning(list(prompts))
        if isinstance(cond, dict):
            cond = cond["crossattn"]
        with torch.inference_mode(False):
            return cond.clone().to(device=self.device, dtype=torch.float32)

    def gradient_checkpointing(self):
        return gradient_checkpointing([self.unet, self.vae])


def is_forge_model(sd_model: Any) -> bool:
    return getattr(sd_model, "forge_objects", None) is not None


def backend_for(sd_model: Any, cmd_opts: Any = None, **kwargs: Any):
    """The right backend for the webui's loaded model (refuses low/medvram and unsupported models)."""
    if cmd_opts is not None:
        check_memory_flags(cmd_opts)
    if sd_model is None:
        raise RenegError("No Stable Diffusion model is loaded. Select a checkpoint first.")
    if is_forge_model(sd_model):
        if getattr(sd_model, "is_sdxl", False):
            from .forge_sdxl_backend import ForgeSDXLBackend

            return ForgeSDXLBackend(sd_model, name=kwargs.get("name"))
        return ForgeBackend(sd_model, name=kwargs.get("name"))
    from .sgm_backend import SgmBackend, is_sgm_model

    if is_sgm_model(sd_model):  # A1111's SDXL (sgm DiffusionEngine)
        return SgmBackend(sd_model, **kwargs)
    return LdmBackend(sd_model, **kwargs)
