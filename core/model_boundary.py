"""The one boundary between the ReNeg engine and a diffusion model.

The engine (sampler, training, refinement) only talks to a :class:`DiffusionBackend`.
Implementations: :mod:`.diffusers_backend` (standalone / CLI), the ComfyUI adapter
(``comfy_nodes/model_adapter.py``) and the A1111/Forge adapter (``a1111_extension/model_adapter.py``).

Conventions shared by every implementation:

* latents live in the *DDPM* space of the model's own VAE scaling (``x_t = sqrt(a)*x0 + sqrt(1-a)*eps``),
  shape ``[B, C, H/8, W/8]``;
* ``timestep`` is a discrete DDPM index in ``[0, num_train_timesteps)`` (int or 0-d/1-d tensor);
* ``context`` is the text conditioning ``[B, T, D]`` (``D`` = :attr:`context_dim`);
* :meth:`model_output` returns the raw network output in :attr:`prediction_type` units
  (``"epsilon"``, ``"v_prediction"`` or ``"sample"`` i.e. x0) and must be differentiable w.r.t. ``context``;
* :meth:`decode` maps latents to images in ``[0, 1]`` (BCHW, float) differentiably.
* All model weights are frozen: backends never hand out parameters with ``requires_grad=True``.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@runtime_checkable
class DiffusionBackend(Protocol):
    """What the ReNeg engine needs from a latent diffusion model."""

    #: Human-readable model name (path, hub id, ``tiny``, host checkpoint title).
    name: str
    #: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
    prediction_type: str
    #: Width of the text conditioning (768 SD1.x, 1024 SD2.x).
    context_dim: int
    #: Latent channels (4 for SD1/SD2).
    latent_channels: int
    #: Pixel-to-latent downsampling factor (8 for SD1/SD2).
    vae_scale_factor: int

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype:
        """Dtype the networks compute in (the embedding is kept in fp32 by the engine)."""
        ...

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """Cumulative alphas of the training schedule, fp32, shape ``[num_train_timesteps]``, on CPU."""
        ...

    def model_output(self, latents: torch.Tensor, timestep: torch.Tensor | int,
                     context: torch.Tensor) -> torch.Tensor:
        """Raw network output for DDPM latents at a discrete timestep, in ``prediction_type`` units."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable VAE decode of DDPM-space latents to images in ``[0, 1]``, BCHW."""
        ...

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text conditioning ``[len(prompts), T, D]`` (no grad). ``""`` gives the null-text embedding."""
        ...


def encode_fp32(backend: DiffusionBackend, prompts: Sequence[str]) -> torch.Tensor:
    """Text conditioning ``[len(prompts), T, D]`` computed in fp32, e.g. the null-text start of training.

    Backends with an optional ``encode_prompts_fp32`` method (the diffusers backend) run their text encoder in
    fp32 for it, so an fp16 model does not round the embedding through fp16; others return
    ``encode_prompts(...)`` as fp32.
    """
    fn = getattr(backend, "encode_prompts_fp32", None)
    out = fn(list(prompts)) if fn is not None else backend.encode_prompts(list(prompts))
    return out.float()


def frozen_entries(backend: DiffusionBackend, negative: torch.Tensor, freeze_pooled: bool = False
                   ) -> Optional[torch.Tensor]:
    """Bool mask of the negative's entries that learning must leave at their start values, or None (all learned).

    Backends whose conditioning packs more than a context (SDXL: the pooled row, :mod:`.sdxl_backend`) define
    ``frozen_entries(negative, freeze_pooled)``; ``freeze_pooled`` on any other backend is an error.
    """
    fn = getattr(backend, "frozen_entries", None)
    if fn is None:
        if freeze_pooled:
            from .errors import RenegError

            raise RenegError(f"Freezing the pooled embedding applies to SDXL models only; '{backend.name}' has no "
                             "pooled part. Drop the option (--freeze-pooled).")
        return None
    return fn(negative, freeze_pooled)
