"""What the *ReNeg Refine (per prompt)* node does, on ComfyUI objects (imported inside ComfyUI only).

The refinement itself is :func:`~..core.refine.refine_negative` — the same function the CLI's ``reneg refine``
runs — on a :class:`~.model_adapter.ComfyBackend`. The node encodes its prompt with the graph's CLIP exactly as
*CLIP Text Encode* does (:func:`encode_positive`), refines against that conditioning and outputs it for the
KSampler, so the prompt is typed once; the prompt text is what the reward scores the images against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..core.errors import RenegError
from ..core.ddim import initial_latents
from ..core.refine import refine_negative
from ..core.train import render
from .conditioning import fit_tokens, pack, pooled_of, single_tensor
from .model_adapter import prepared
from .progress import Reporter, bchw_to_comfy_image, comfy_reporter


@dataclass
class NodeRefineResult:
    conditioning: list[Any]        #: refined negative as a CONDITIONING (pooled_output carried from the input)
    best: torch.Tensor             #: ``[1, T, D]`` fp32 CPU
    preview: torch.Tensor          #: ComfyUI IMAGE ``[1, H, W, 3]``: full generation with the refined negative
    trace: list[float]
    best_step: int
    start_reward: float
    best_reward: float


def encode_positive(clip, prompt: str) -> list[Any]:
    """The prompt's CONDITIONING exactly as ComfyUI's *CLIP Text Encode* makes it (so Refine can be the one
    place the prompt is typed)."""
    if clip is None:
        raise RenegError("ReNeg Refine needs the CLIP input (it encodes the prompt): connect the checkpoint's CLIP.")
    if not prompt or not prompt.strip():
        raise RenegError("The prompt is empty: type the positive prompt into ReNeg Refine (it is encoded for the "
                         "KSampler and the reward scores the images against it).")
    return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))


def refine_conditioning(model, vae, positive, negative, reward, *, prompt: str, seed: int = 0,
                        num_inference_steps: int = 30, guidance_scale: float = 7.5, width: int = 512,
                        height: int = 512, max_steps: int = 10, patience: int = 3, lr: float = 5e-3,
                        reporter: Optional[Reporter] = None) -> NodeRefineResult:
    """Refine the ``negative`` CONDITIONING for ``positive``/``prompt``; re-raises a user interrupt."""
    if not prompt or not prompt.strip():
        raise RenegError("The prompt is empty: the reward scores the images against the prompt's text.")
    init = single_tensor(negative, "negative")
    cond = fit_tokens(single_tensor(positive, "positive"), init.shape[1], "positive")
    reporter = reporter or comfy_reporter(max_steps + 1)
    with prepared(model, vae, None) as backend:
        reward = reward.to(backend.device)
        result = refine_negative(
            backend, reward, prompt, init, seed=seed, max_steps=max_steps, patience=patience, lr=lr,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height, width=width,
            cond=cond, callback=lambda k, n, score, _image: reporter.step(k + 1),
            should_stop=reporter.should_stop)
        reporter.raise_if_interrupted()  # before the preview render: a cancel should not wait for it
        image = render(backend, cond.to(backend.device), result.best.to(backend.device),
                       initial_latents(backend, 1, height, width, seed), num_inference_steps, guidance_scale).cpu()
        reporter.step(reporter.total, image)
    reporter.raise_if_interrupted()
    with torch.inference_mode(False):
        best = result.best.detach().to("cpu", torch.float32).clone()
    return NodeRefineResult(pack(best, pooled_of(negative)), best, bchw_to_comfy_image(image),
                            list(result.trace), int(result.best_step), float(result.start_reward),
                            float(result.best_reward))
