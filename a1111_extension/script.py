"""The always-visible "ReNeg" accordion in txt2img/img2img (A1111 ``Script``; also works in Forge).

Registered by ``scripts/reneg_a1111.py`` (the only file that imports this class). Arguments: see
:mod:`.script_logic` (and ``docs/a1111.md`` for the API).
"""
from __future__ import annotations

import gradio as gr

from modules import scripts, shared
from modules.ui_common import create_refresh_button
from modules.ui_components import InputAccordion

from ..core.embedding_io import check_compatible, save_embedding
from ..core.errors import RenegError
from . import library, runtime, settings
from .model_adapter import model_context_dim
from .script_logic import (KEY_REFINED, ScriptArgs, args_from_infotext, infotext_params, refine_batch,
                           refine_key, summarize_refinement)
from .uncond import UncondPlan, attach, PLAN_ATTR

_embeddings = library.EmbeddingCache()
_refined = library.RefineCache()

ARGS_ATTR = "reneg_script_args"


def embedding_names() -> list[str]:
    return list(library.list_embeddings(settings.embedding_dirs()))


def _report(p, message: str) -> None:
    """Tell the user (console + the comment shown under the generated images)."""
    print(f"ReNeg: {message}", flush=True)
    try:
        p.comment(f"ReNeg: {message}")
    except Exception:  # noqa: BLE001 - comments are best effort
        pass


class RenegScript(scripts.Script):
    sorting_priority = 14

    def title(self):
        return "ReNeg"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        names = embedding_names()
        with InputAccordion(False, label="ReNeg", elem_id=self.elem_id("enable")) as enabled:
            with gr.Row():
                embedding = gr.Dropdown(label="Negative embedding", choices=names, value=names[0] if names else None,
                                        allow_custom_value=True, elem_id=self.elem_id("embedding"))
                create_refresh_button(embedding, lambda: None, lambda: {"choices": embedding_names()},
                                      self.elem_id("embedding_refresh"))
                strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Strength",
                                     elem_id=self.elem_id("strength"))
            with gr.Row():
                refine = gr.Checkbox(False, label="Refine for this prompt", elem_id=self.elem_id("refine"))
                refine_steps = gr.Slider(1, 50, value=10, step=1, label="Max refine steps",
                                         elem_id=self.elem_id("refine_steps"))
                patience = gr.Slider(1, 20, value=3, step=1, label="Patience", elem_id=self.elem_id("patience"))
                reward = gr.Textbox(value=str(settings.opt("reneg_default_reward")), label="Reward",
                                    elem_id=self.elem_id("reward"))

        def pasted(field):
            def restore(d):
                args = args_from_infotext(d)
                return gr.update() if args is None else getattr(args, field)
            return restore

        self.infotext_fields = [
            (enabled, lambda d: args_from_infotext(d) is not None),
            (embedding, pasted("embedding")),
            (strength, pasted("strength")),
            (refine, pasted("refine")),
            (refine_steps, pasted("refine_steps")),
            (patience, pasted("patience")),
            (reward, pasted("reward")),
        ]
        return [enabled, embedding, strength, refine, refine_steps, patience, reward]

    # ------------------------------------------------------------------ processing
    def process(self, p, *args):
        attach(p, None)
        try:
            a = ScriptArgs.from_args(args)
            if not a.enabled:
                return
            found = library.resolve(a.embedding, settings.embedding_dirs())
            with runtime.torch_load_unpatched():
                emb, file_hash = _embeddings.load(found.path)
            check_compatible(emb.tensor, model_context_dim(shared.sd_model), where="loaded checkpoint")
        except RenegError as exc:
            _report(p, f"not applied: {exc}")
            return
        a.embedding = found.name
        p.extra_generation_params.update(infotext_params(a, file_hash))
        attach(p, UncondPlan(emb.tensor, strength=a.strength, name=found.name))
        setattr(p, ARGS_ATTR, (a, found, file_hash))

    def process_batch(self, p, *args, **kwargs):
        plan = getattr(p, PLAN_ATTR, None)
        state = getattr(p, ARGS_ATTR, None)
        if plan is None or state is None or not state[0].refine:
            return
        a, found, file_hash = state
        base = _embeddings.load(found.path)[0].tensor
        prompts = list(kwargs.get("prompts") or p.prompts)
        seeds = list(kwargs.get("seeds") or p.seeds)
        try:
            backend = runtime.current_backend()
            with runtime.torch_load_unpatched():
                reward = runtime.load_reward(a.reward, backend.device)
        except RenegError as exc:
            _report(p, f"refinement skipped: {exc}")
            return
        results = []

        def refine_one(prompt: str, seed: int):
            lr = float(settings.opt("reneg_refine_lr"))
            key = refine_key(runtime.model_hash(), file_hash, prompt, seed, a,
                             (p.cfg_scale, p.width, p.height, p.steps, lr))
            hit = _refined.get(key)
            if hit is None:
                hit = self._refine(p, backend, reward, prompt, seed, base, a, lr)
                if hit is None:  # interrupted: keep the unrefined embedding, do not cache
                    return base
                _refined.put(key, hit)
                self._maybe_save(hit, found.name, prompt, seed, a, backend)
            results.append(hit)
            return hit.best.detach().cpu().float()

        try:
            rows = refine_batch(refine_one, prompts, seeds)
        except RenegError as exc:
            _report(p, f"refinement failed: {exc}")
            return
        finally:
            runtime.release_reward()
        plan.set_negative(library.stack_rows(rows))
        if results:
            p.extra_generation_params[KEY_REFINED] = summarize_refinement(results)

    @staticmethod
    def _refine(p, backend, reward, prompt, seed, base, a: ScriptArgs, lr: float):
        from ..core.refine import refine_negative

        def progress(step, total, score, _preview=None):
            runtime.set_textinfo(f"ReNeg: refining for '{prompt[:40]}' — step {step}/{total}, reward {score:.4f}")

        runtime.set_textinfo(f"ReNeg: refining for '{prompt[:40]}'")
        with runtime.grad_enabled(), runtime.maybe_checkpointing(backend):
            result = refine_negative(backend, reward, prompt, base.to(backend.device), seed=seed,
                                     max_steps=a.refine_steps, patience=a.patience, lr=lr,
                                     num_inference_steps=int(p.steps), guidance_scale=float(p.cfg_scale),
                                     height=int(p.height), width=int(p.width), callback=progress,
                                     should_stop=runtime.interrupted)
        if result.stopped:
            return None
        print(f"ReNeg: refined '{prompt[:60]}': reward {float(result.start_reward):.4f} -> "
              f"{float(result.best_reward):.4f} (best step {result.best_step})", flush=True)
        return result

    @staticmethod
    def _maybe_save(result, base_name, prompt, seed, a: ScriptArgs, backend) -> None:
        if not settings.opt("reneg_save_refined"):
            return
        path = settings.reneg_dir() / library.refined_filename(base_name, prompt, seed)
        save_embedding(path, result.best.detach().cpu().float(), overwrite=True, base_model=backend.name,
                       reward=a.reward, prompt=prompt, seed=str(seed), refined_from=base_name, steps=result.best_step)

    def postprocess(self, p, processed, *args):
        attach(p, None)
        if hasattr(p, ARGS_ATTR):
            delattr(p, ARGS_ATTR)
