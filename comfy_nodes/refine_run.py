"""What the *ReNeg Refine (per prompt)* node does, on ComfyUI objects (no ComfyUI import at module level).

The refinement itself is :func:`~..core.refine.refine_batch` — the engine the CLI's ``reneg refine --prompts``
runs — on a :class:`~.model_adapter.ComfyBackend`, once for the whole latent batch (one row per image). The node
encodes its prompt(s) with the graph's CLIP exactly as *CLIP Text Encode* does (:func:`encode_positive`),
refines against that conditioning and outputs it for the KSampler, so the prompt is typed once; the prompt text
is what the reward scores the images against.

Batches follow the KSampler: row ``i``'s x_T is the KSampler's noise for that row (:func:`ksampler_noise`, the
same draw as ``comfy.sample.prepare_noise``: every row from the one seed, ``batch_index`` honoured), so the
refinement of row ``i`` is judged on the trajectory of the image the KSampler makes in row ``i``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..core.embedding_io import check_compatible
from ..core.errors import RenegError
from ..core.refine import RefineConfig, refine_batch, refinement_step_index
from .conditioning import entry_tensor, fit_tokens, plain, pooled_of
from .model_adapter import is_pixart, prepared
from .pixart import attended_batch, full_rows
from .progress import Reporter, bchw_to_comfy_image, comfy_reporter
from .sdxl import conditioning_of, is_sdxl_width, packed_of


@dataclass
class NodeRefineResult:
    conditioning: list[Any]        #: refined negatives as one CONDITIONING ``[B, T, D]`` (row i for latent row i)
    best: torch.Tensor             #: ``[B, T, D]`` fp32 CPU
    image: torch.Tensor            #: ComfyUI IMAGE ``[B, H, W, 3]``: the refinement's own (guaranteed) images
    rows: list[dict] = field(default_factory=list)  #: per row: prompt, trace, best_step, start/best reward, ...


def parse_prompt_list(text: str) -> list[str]:
    """The node's prompt box: one prompt per non-empty line (surrounding spaces dropped)."""
    prompts = [line.strip() for line in (text or "").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise RenegError("The prompt is empty: type the positive prompt into ReNeg Refine (one per line for a "
                         "batch; it is encoded for the KSampler and the reward scores the images against it).")
    return prompts


def prompts_for_rows(prompts: Sequence[str], rows: Optional[int]) -> list[str]:
    """One prompt per batch row: the prompt list itself (``rows`` None: no latent, the list is the batch), one
    prompt repeated for every row, or exactly ``rows`` prompts; anything else is a clear error."""
    prompts = list(prompts)
    if rows is None or len(prompts) == rows:
        return prompts
    if len(prompts) == 1:
        return prompts * rows
    raise RenegError(f"ReNeg Refine got {len(prompts)} prompts (one per line) for a latent batch of {rows}: give "
                     f"one prompt for all rows or exactly {rows} lines, or set the Empty Latent Image's batch_size "
                     f"to {len(prompts)}.")


def batch_indices(latent: Optional[dict], rows: int) -> list[int]:
    """The latent's ``batch_index`` (set by *Latent From Batch* / *Repeat Latent Batch*), or ``0..rows-1``."""
    inds = None if latent is None else latent.get("batch_index")
    if inds is None:
        return list(range(rows))
    inds = [int(i) for i in inds]
    if len(inds) != rows:
        raise RenegError(f"The latent's batch_index has {len(inds)} entries for {rows} rows.")
    return inds


def ksampler_noise(shape: Sequence[int], seed: int, indices: Optional[Sequence[int]] = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The KSampler's initial noise for a latent batch of ``shape`` — ``comfy.sample.prepare_noise``: one CPU
    generator seeded with ``seed``; without ``indices`` one draw of the whole batch, with them (the latent's
    ``batch_index``) one ``[1, C, h, w]`` draw per index up to the largest, row ``i`` taking draw ``indices[i]``."""
    generator = torch.Generator("cpu").manual_seed(int(seed))  # == torch.manual_seed(seed), without global state
    shape = [int(s) for s in shape]
    if indices is None:
        return torch.randn(shape, dtype=dtype, generator=generator, device="cpu")
    unique, inverse = np.unique(np.asarray(list(indices)), return_inverse=True)
    draws = {}
    for i in range(int(unique[-1]) + 1):
        noise = torch.randn([1] + shape[1:], dtype=dtype, generator=generator, device="cpu")
        if i in unique:
            draws[i] = noise
    return torch.cat([draws[int(unique[j])] for j in np.asarray(inverse).reshape(-1)], dim=0)


def encode_positive(clip, prompt: str) -> list[Any]:
    """The prompt's CONDITIONING exactly as ComfyUI's *CLIP Text Encode* makes it (so Refine can be the one
    place the prompt is typed)."""
    if clip is None:
        raise RenegError("ReNeg Refine needs the CLIP input (it encodes the prompt): connect the checkpoint's CLIP.")
    if not prompt or not prompt.strip():
        raise RenegError("The prompt is empty: type the positive prompt into ReNeg Refine (it is encoded for the "
                         "KSampler and the reward scores the images against it).")
    return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))


def _entry(conditioning: list[Any], prompt: str) -> tuple[torch.Tensor, dict]:
    if not isinstance(conditioning, list) or len(conditioning) != 1:
        raise RenegError(f"The CLIP encoded {prompt[:40]!r} to {len(conditioning)} conditioning entries (scheduled "
                         "hooks?); ReNeg Refine needs plain CLIP Text Encode conditioning.")
    tensor, extra = conditioning[0][0], dict(conditioning[0][1])
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise RenegError(f"The prompt's conditioning has shape {list(tensor.shape)}; expected [1, tokens, dim].")
    return tensor, extra


def batch_positive(encoded: Sequence[list[Any]], prompts: Sequence[str]) -> list[Any]:
    """One CONDITIONING whose row ``i`` is ``encoded[i]`` (the KSampler pairs cond row i with latent row i).

    Prompts of different 75-token chunk counts are repeated to a common length, as ComfyUI itself does when it
    batches cross-attention conds (``comfy.conds.CONDCrossAttn.concat``: "padding with repeat doesn't change
    result"). A single prompt is returned as encoded (the KSampler broadcasts it to every row)."""
    if len(encoded) == 1:
        return encoded[0]
    entries = [_entry(c, p) for c, p in zip(encoded, prompts)]
    with torch.inference_mode(False):
        length = math.lcm(*[int(t.shape[1]) for t, _ in entries])
        tensors = [t.repeat(1, length // t.shape[1], 1) for t, _ in entries]
        extra = dict(entries[0][1])
        pooled = [e.get("pooled_output") for _, e in entries]
        if all(isinstance(x, torch.Tensor) for x in pooled):
            extra["pooled_output"] = torch.cat([x.detach().clone() for x in pooled])
        else:
            extra.pop("pooled_output", None)
        return [[torch.cat([t.detach().clone() for t in tensors]), extra]]


def negative_rows(negative: Any, rows: int) -> torch.Tensor:
    """The start negative(s) ``[1|rows, T, D]`` as an autograd-capable fp32 CPU tensor."""
    tensor = entry_tensor(negative, "negative")
    if tensor.shape[0] not in (1, rows):
        raise RenegError(f"negative: conditioning tensor has shape {list(tensor.shape)}; ReNeg Refine needs "
                         f"[1, tokens, dim] (one start for all rows) or [{rows}, tokens, dim].")
    if is_sdxl_width(tensor.shape[-1]):  # SDXL: context + pooled_output, packed for the engine
        return packed_of(tensor, pooled_of(negative), "negative")
    return plain(tensor)


def pack_rows(best: torch.Tensor, negative: Any) -> list[Any]:
    """The refined negatives as one CONDITIONING ``[B, T, D]`` (pooled_output carried, repeated per row)."""
    if is_sdxl_width(best.shape[-1]):
        return conditioning_of(best)  # SDXL: each row's own refined pooled part
    pooled = pooled_of(negative)
    rows = best.shape[0]
    if pooled is None or pooled.shape[0] not in (1, rows):
        pooled = torch.zeros(rows, best.shape[-1])
    elif pooled.shape[0] == 1:
        pooled = pooled.expand(rows, *pooled.shape[1:]).clone()
    return [[best.detach().to("cpu", torch.float32), {"pooled_output": pooled.to("cpu", torch.float32)}]]


def refine_conditioning(model, vae, positive_rows: Sequence[list[Any]], negative, reward, *,
                        prompts: Sequence[str], seed: int = 0, num_inference_steps: int = 30,
                        guidance_scale: float = 7.5, width: int = 512, height: int = 512, max_steps: int = 10,
                        patience: int = 3, lr: float = 5e-3, latent: Optional[dict] = None,
                        reporter: Optional[Reporter] = None) -> NodeRefineResult:
    """Refine the ``negative`` CONDITIONING for every batch row at once; re-raises a user interrupt.

    ``positive_rows[i]`` is row i's CONDITIONING (from :func:`encode_positive`), ``prompts[i]`` its text.
    ``latent``: the KSampler's latent (its batch size, size and ``batch_index`` decide the rows and their noise);
    without it the prompts are the batch at ``width`` x ``height``.
    """
    rows = len(prompts)
    if rows == 0 or len(positive_rows) != rows:
        raise RenegError(f"Got {len(positive_rows)} positive conditionings for {rows} prompts.")
    init = negative_rows(negative, rows)
    pixart = is_pixart(model)  # PixArt: ComfyUI's attended-rows conditionings -> the engine's 120 rows
    if pixart:
        init = full_rows(init, "negative")
    conds = []
    for c, p in zip(positive_rows, prompts):
        tensor, extra = _entry(c, p)
        if is_sdxl_width(init.shape[-1]):
            check_compatible(init, int(tensor.shape[-1]), where="CLIP (the prompt's conditioning)")
            conds.append(packed_of(tensor, extra.get("pooled_output"), "positive"))
            continue
        with torch.inference_mode(False):
            tensor = tensor.detach().to("cpu", torch.float32).clone()
            if not pixart:  # e.g. a PixArt negative on an SD model: the family error, not a token-count one
                check_compatible(init, int(tensor.shape[-1]), where="MODEL's CLIP")
            conds.append(full_rows(tensor, "positive") if pixart else fit_tokens(tensor, init.shape[1], "positive"))
    cond = torch.cat(conds)
    indices = batch_indices(latent, rows)
    if latent is not None:
        samples = latent["samples"]
        if samples.dim() != 4 or samples.shape[0] != rows:
            raise RenegError(f"The latent has shape {list(samples.shape)}; expected [{rows}, C, h, w].")
    # row i's gradient step index is drawn from seed + its batch index (row 0 of a batch of one: the seed, as
    # `reneg refine --seed`); its x_T is the KSampler's noise for that row
    steps = [refinement_step_index(int(seed) + i, num_inference_steps, RefineConfig.last_k) for i in indices]
    reporter = reporter or comfy_reporter(max_steps + 1)
    with prepared(model, vae, None) as backend:
        f = backend.vae_scale_factor
        if latent is not None:
            shape, dtype = list(samples.shape), samples.dtype
            if shape[1] != backend.latent_channels:
                raise RenegError(f"The latent has {shape[1]} channels; this model's latents have "
                                 f"{backend.latent_channels}: use an Empty Latent Image for this checkpoint.")
            height, width = shape[2] * f, shape[3] * f
        else:
            shape, dtype = [rows, backend.latent_channels, height // f, width // f], torch.float32
        noise = ksampler_noise(shape, seed, indices if latent is not None and "batch_index" in latent else None,
                               dtype=dtype if dtype.is_floating_point else torch.float32).float()
        config = RefineConfig(max_steps=max_steps, patience=patience, lr=lr,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              height=height, width=width)
        reward = reward.to(backend.device)
        results = refine_batch(backend, reward, list(prompts), init.to(backend.device), [int(seed)] * rows, config,
                               conds=cond.to(backend.device), step_indices=steps, latents=noise,
                               callback=lambda k, n, scores, _image: reporter.step(k + 1),
                               should_stop=reporter.should_stop)
        reporter.raise_if_interrupted()
        images = torch.cat([r.image for r in results]).float()
        reporter.step(reporter.total, images[:1])
    reporter.raise_if_interrupted()
    with torch.inference_mode(False):
        best = torch.cat([r.best for r in results]).detach().to("cpu", torch.float32).clone()
    info = [{"row": b, "batch_index": indices[b], "prompt": r.prompt, "trace": [float(x) for x in r.trace],
             "best_step": int(r.best_step), "start_reward": float(r.start_reward),
             "best_reward": float(r.best_reward), "step_index": int(r.step_index)} for b, r in enumerate(results)]
    return NodeRefineResult(pack_rows(attended_batch(best) if pixart else best, negative), best,
                            bchw_to_comfy_image(images), info)
