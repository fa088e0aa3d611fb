"""The ReNeg script's logic without the webui: arguments, infotext, paste, per-prompt refinement.

The webui ``Script`` (:mod:`.script`) is a thin shell around these functions.

Script arguments, in order (the UI components and the API's ``alwayson_scripts["reneg"]["args"]``):

====  ===============  =======  ==========================================================================
 #    name             type     meaning
====  ===============  =======  ==========================================================================
 0    enabled          bool     apply a ReNeg negative embedding
 1    embedding        str      dropdown name (``sd1.5_reneg_emb``), file name, or stem
 2    strength         float    0..1 blend with the negative prompt's conditioning; 1 = replace (default)
 3    refine           bool     refine the embedding for each prompt before sampling
 4    refine_steps     int      max optimisation steps (default 10)
 5    patience         int      stop after this many steps without a better reward (default 3)
 6    reward           str      reward name or mix, e.g. ``hpsv2.1`` or ``hpsv2.1:1,aesthetic:0.5``
====  ===============  =======  ==========================================================================

Only ``enabled`` and ``embedding`` are required; missing trailing arguments take their defaults.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Sequence

from ..core.errors import RenegError

#: Infotext keys (``ReNeg: name, ReNeg strength: 0.8, ...``).
KEY_NAME = "ReNeg"
KEY_HASH = "ReNeg hash"
KEY_STRENGTH = "ReNeg strength"
KEY_REFINE_STEPS = "ReNeg refine steps"
KEY_PATIENCE = "ReNeg refine patience"
KEY_REWARD = "ReNeg reward"
KEY_REFINED = "ReNeg refined"
#: Present (with the reason) when ReNeg was enabled but not applied / refinement was asked for but skipped; in
#: the infotext and in the API's ``info["extra_generation_params"]``. Paste ignores them.
KEY_NOT_APPLIED = "ReNeg not applied"
KEY_REFINE_SKIPPED = "ReNeg refine skipped"
#: Present when saving a refined embedding (Settings → ReNeg) failed; the image was still made with it.
KEY_REFINED_NOT_SAVED = "ReNeg refined not saved"
#: Attribute of ``p`` the X/Y/Z plot axes set: ``{"embedding": name | NO_EMBEDDING, "strength": float}``.
OVERRIDES_ATTR = "reneg_xyz_overrides"
NO_EMBEDDING = "(none)"

DEFAULT_REWARD = "hpsv2.1"


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


@dataclass
class ScriptArgs:
    enabled: bool = False
    embedding: str = ""
    strength: float = 1.0
    refine: bool = False
    refine_steps: int = 10
    patience: int = 3
    reward: str = DEFAULT_REWARD

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> "ScriptArgs":
        """Parse the positional script args (UI or API); validates ranges with clear errors."""
        names = [f.name for f in fields(cls)]
        if len(args) > len(names):
            raise RenegError(f"ReNeg takes at most {len(names)} script args ({', '.join(names)}); got {len(args)}.")
        values = dict(zip(names, args))
        out = cls()
        try:
            out.enabled = _bool(values.get("enabled", out.enabled))
            out.embedding = str(values.get("embedding") or "").strip()
            out.strength = float(values["strength"]) if values.get("strength") is not None else 1.0
            out.refine = _bool(values.get("refine", out.refine))
            out.refine_steps = int(values.get("refine_steps") or out.refine_steps)
            out.patience = int(values.get("patience") or out.patience)
            out.reward = str(values.get("reward") or DEFAULT_REWARD).strip()
        except (TypeError, ValueError) as exc:
            raise RenegError(f"Bad ReNeg script argument ({exc}); expected {names}.") from exc
        if not 0.0 <= out.strength <= 1.0:
            raise RenegError(f"ReNeg strength must be within 0..1 (got {out.strength}).")
        if out.refine_steps < 1 or out.patience < 1:
            raise RenegError("ReNeg refine steps and patience must be >= 1.")
        return out

    def as_list(self) -> list:
        return list(asdict(self).values())


def apply_overrides(args: ScriptArgs, overrides: Optional[dict]) -> ScriptArgs:
    """The args with X/Y/Z plot axis values applied: an embedding value enables ReNeg with that file
    (:data:`NO_EMBEDDING` disables it); a strength value sets the strength (and enables ReNeg when an
    embedding is chosen)."""
    if not overrides:
        return args
    out = ScriptArgs(**asdict(args))
    if "embedding" in overrides:
        name = str(overrides["embedding"]).strip()
        out.enabled = bool(name) and name != NO_EMBEDDING
        out.embedding = "" if name == NO_EMBEDDING else name
    if "strength" in overrides:
        out.strength = float(overrides["strength"])
        if not 0.0 <= out.strength <= 1.0:
            raise RenegError(f"ReNeg strength must be within 0..1 (got {out.strength}).")
        if "embedding" not in overrides and out.embedding:
            out.enabled = True
    return out


def infotext_params(args: ScriptArgs, file_hash: str = "") -> dict[str, Any]:
    """``p.extra_generation_params`` entries once the embedding is applied (defaults are left out).

    Refinement settings are not here: :func:`refine_params` adds them only when refinement really ran, so
    pasting the infotext of an image whose refinement was skipped does not turn refinement on."""
    params: dict[str, Any] = {KEY_NAME: args.embedding}
    if file_hash:
        params[KEY_HASH] = file_hash
    if args.strength != 1.0:
        params[KEY_STRENGTH] = args.strength
    return params


def refine_params(args: ScriptArgs, summary: str) -> dict[str, Any]:
    """Infotext entries of a refinement that ran (its settings and ``start->best (step n)``)."""
    return {KEY_REFINE_STEPS: args.refine_steps, KEY_PATIENCE: args.patience, KEY_REWARD: args.reward,
            KEY_REFINED: summary}


def args_from_infotext(d: dict[str, Any]) -> Optional[ScriptArgs]:
    """What "paste" restores from a parsed infotext dict; None when the image was made without ReNeg."""
    if KEY_NAME not in d:
        return None
    refine = KEY_REFINE_STEPS in d
    return ScriptArgs(
        enabled=True, embedding=str(d[KEY_NAME]), strength=float(d.get(KEY_STRENGTH, 1.0)), refine=refine,
        refine_steps=int(d.get(KEY_REFINE_STEPS, 10)), patience=int(d.get(KEY_PATIENCE, 3)),
        reward=str(d.get(KEY_REWARD, DEFAULT_REWARD)))


def refine_key(model_hash: str, file_hash: str, prompt: str, seed: int, args: ScriptArgs,
               extra: Sequence[Any]) -> tuple:
    """Cache key of one per-prompt refinement (model, embedding, prompt, seed, settings)."""
    return (model_hash, file_hash, prompt, int(seed), args.refine_steps, args.patience, args.reward, *extra)


def refine_infotext(args: ScriptArgs, refined: dict, skipped: dict) -> dict[str, Any]:
    """Per-image infotext entries for a job with per-image refinement.

    ``refined``: ``{(prompt, seed): "start->best (step n)"}`` of the images whose negative was refined;
    ``skipped``: ``{(prompt, seed): reason}`` of those that kept the unrefined embedding. Each value is a
    :class:`~.batch_refine.PerImage`: the API sees one string, each image's PNG info only its own entries (the
    refine settings only on refined images, so pasting an unrefined image's infotext leaves refinement off).
    """
    from .batch_refine import PerImage

    out: dict[str, Any] = {}
    if refined:
        settings = {KEY_REFINE_STEPS: args.refine_steps, KEY_PATIENCE: args.patience, KEY_REWARD: args.reward}
        for key, value in settings.items():
            out[key] = PerImage(str(value), {k: str(value) for k in refined})
        out[KEY_REFINED] = PerImage("; ".join(refined.values()), refined)
    if skipped:
        out[KEY_REFINE_SKIPPED] = PerImage("; ".join(dict.fromkeys(skipped.values())), skipped)
    return out


def summarize_refinement(results: Sequence[Any]) -> str:
    """Infotext value like ``0.2210->0.2391 (step 4)``; several prompts are joined with ``; ``."""
    parts = []
    for r in results:
        parts.append(f"{float(r.start_reward):.4f}->{float(r.best_reward):.4f} (step {int(r.best_step)})")
    return "; ".join(parts)
