"""The always-visible "ReNeg" accordion in txt2img/img2img (A1111 ``Script``; also works in Forge).

Registered by ``scripts/reneg_a1111.py`` (the only file that imports this class). Arguments: see
:mod:`.script_logic` (and ``docs/a1111.md`` for the API).
"""
from __future__ import annotations

import gradio as gr

from modules import scripts, shared
from modules.ui_components import InputAccordion, ToolButton

from ..core.embedding_io import check_compatible
from ..core.errors import RenegError
from . import library, reward_setup, runtime, settings
from .model_adapter import model_context_dim
from .script_logic import (KEY_NOT_APPLIED, KEY_REFINE_SKIPPED, KEY_REFINED_NOT_SAVED, OVERRIDES_ATTR, ScriptArgs,
                           apply_overrides, args_from_infotext, infotext_params, refine_infotext, refine_key)
from .uncond import UncondPlan, attach, PLAN_ATTR

_embeddings = library.EmbeddingCache()
_refined = library.RefineCache()

ARGS_ATTR = "reneg_script_args"
#: Attribute of ``p``: the job's per-image refinement summaries (infotext), across its batches.
REFINED_ATTR = "reneg_refined_images"


def embedding_names() -> list[str]:
    """Loadable embeddings (the dropdown's choices); files that do not load are listed by :func:`bad_files_html`."""
    return list(library.scan_embeddings(settings.embedding_dirs())[0])


def bad_files_html() -> str:
    return library.problems_html(library.scan_embeddings(settings.embedding_dirs())[1])


def refresh_embeddings():
    note = bad_files_html()
    return gr.update(choices=embedding_names()), gr.update(value=note, visible=bool(note))


def refresh_rewards():
    choices = settings.installed_rewards()
    note = reward_setup.status_html(choices, settings.rewards_dir())
    return gr.update(choices=choices), gr.update(value=note, visible=bool(note))


def _report(p, key: str, message: str) -> None:
    """Tell the user: console, the comment under the images, and ``key`` in the infotext / API info
    (``info["extra_generation_params"]``), so API callers see it too."""
    print(f"ReNeg: {key[len('ReNeg '):]}: {message}", flush=True)
    p.extra_generation_params[key] = message
    try:
        p.comment(f"{key}: {message}")
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
        bad = bad_files_html()
        rewards = settings.installed_rewards()
        reward_note = reward_setup.status_html(rewards, settings.rewards_dir())
        with InputAccordion(False, label="ReNeg", elem_id=self.elem_id("enable")) as enabled:
            with gr.Row():
                embedding = gr.Dropdown(label="Negative embedding", choices=names, value=names[0] if names else None,
                                        allow_custom_value=True, elem_id=self.elem_id("embedding"))
                emb_refresh = ToolButton(value="\U0001f504", elem_id=self.elem_id("embedding_refresh"),
                                         tooltip="Negative embedding: re-scan the ReNeg folders")
                strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Strength",
                                     elem_id=self.elem_id("strength"))
            bad_note = gr.HTML(bad, visible=bool(bad), elem_id=self.elem_id("bad_files"))
            with gr.Row():
                refine = gr.Checkbox(False, label="Refine for this prompt", elem_id=self.elem_id("refine"))
                refine_steps = gr.Slider(1, 50, value=10, step=1, label="Max refine steps",
                                         elem_id=self.elem_id("refine_steps"))
                patience = gr.Slider(1, 20, value=3, step=1, label="Patience", elem_id=self.elem_id("patience"))
                reward = gr.Dropdown(label="Reward", choices=rewards, value=settings.default_reward(rewards),
                                     allow_custom_value=True, elem_id=self.elem_id("reward"))
                reward_refresh = ToolButton(value="\U0001f504", elem_id=self.elem_id("reward_refresh"),
                                            tooltip="Reward: re-scan the installed reward weights")
            reward_status = gr.HTML(reward_note, visible=bool(reward_note), elem_id=self.elem_id("reward_note"))
        emb_refresh.click(fn=refresh_embeddings, inputs=[], outputs=[embedding, bad_note])
        reward_refresh.click(fn=refresh_rewards, inputs=[], outputs=[reward, reward_status])

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
    @property
    def api_info(self):
        """The webui's script info for ``/sdapi/v1/script-info``, with the embedding choices re-scanned on every
        read (the webui builds it once with the UI, so new files would otherwise show only after Reload UI)."""
        info = self.__dict__.get("_api_info")
        if info is not None:
            for arg in info.args:
                if arg.label == "Negative embedding":
                    arg.choices = embedding_names()
                elif arg.label == "Reward":
                    arg.choices = settings.installed_rewards()
        return info

    @api_info.setter
    def api_info(self, value):
        self.__dict__["_api_info"] = value

    def process(self, p, *args):
        attach(p, None)
        try:
            a = apply_overrides(ScriptArgs.from_args(args), getattr(p, OVERRIDES_ATTR, None))
            if not a.enabled:
                return
            found = library.resolve(a.embedding, settings.embedding_dirs())
            with runtime.torch_load_unpatched():
                emb, file_hash = _embeddings.load(found.path)
            check_compatible(emb.tensor, model_context_dim(shared.sd_model), where="loaded checkpoint")
        except RenegError as exc:
            _report(p, KEY_NOT_APPLIED, str(exc))
            return
        a.embedding = found.name
        p.extra_generation_params.update(infotext_params(a, file_hash))
        attach(p, UncondPlan(emb.tensor, strength=a.strength, name=found.name))
        setattr(p, ARGS_ATTR, (a, found, file_hash))

    def process_batch(self, p, *args, **kwargs):
        """Refine one negative per image of this batch (its prompt and seed), all rows in one batched
        refinement, and put row i's negative into row i of the uncond."""
        from ..core.refine import RefineConfig
        from .batch_refine import refine_rows, summary

        plan = getattr(p, PLAN_ATTR, None)
        state = getattr(p, ARGS_ATTR, None)
        if plan is None or state is None or not state[0].refine:
            return
        a, found, file_hash = state
        prompts = list(kwargs.get("prompts") or p.prompts)
        seeds = [int(s) for s in (kwargs.get("seeds") or p.seeds)]
        try:
            with runtime.torch_load_unpatched():  # the file may have changed on disk since process()
                base = _embeddings.load(found.path)[0].tensor
            backend = runtime.current_backend()
            with runtime.torch_load_unpatched():
                reward = runtime.load_reward(a.reward, backend.device)
        except RenegError as exc:
            _report(p, KEY_REFINE_SKIPPED, str(exc))
            return
        lr = float(settings.opt("reneg_refine_lr"))
        config = RefineConfig(max_steps=a.refine_steps, patience=a.patience, lr=lr,
                              num_inference_steps=int(p.steps), guidance_scale=float(p.cfg_scale),
                              height=int(p.height), width=int(p.width))
        model_hash = runtime.model_hash()
        rows = len(prompts)

        def key_of(prompt: str, seed: int) -> tuple:
            return refine_key(model_hash, file_hash, prompt, seed, a, (p.cfg_scale, p.width, p.height, p.steps, lr))

        def progress(k, total, scores):
            live = [x for x in scores if x is not None]
            best = f", reward {max(live):.4f}" if live else ""
            runtime.set_textinfo(f"ReNeg: refining {rows} image(s) — step {k}/{total}, {len(live)} still "
                                 f"improving{best}")

        runtime.set_textinfo(f"ReNeg: refining {rows} image(s) for their prompts")
        try:
            with runtime.grad_enabled(), runtime.maybe_checkpointing(backend):
                outcome = refine_rows(backend, reward, prompts, seeds, base, config, key_of=key_of,
                                      cache=_refined, progress=progress, should_stop=runtime.interrupted,
                                      max_rows=int(settings.opt("reneg_refine_max_rows") or 0))
        except RenegError as exc:
            _report(p, KEY_REFINE_SKIPPED, str(exc))
            return
        finally:
            runtime.release_reward()
        for result in outcome.fresh:
            print(f"ReNeg: refined '{str(result.prompt)[:60]}' (seed {result.seed}): reward "
                  f"{float(result.start_reward):.4f} -> {float(result.best_reward):.4f} (best step "
                  f"{result.best_step})", flush=True)
            self._maybe_save(p, result, found.name, result.prompt, result.seed, a, backend,
                             key_of(result.prompt, result.seed))
        plan.set_negative(library.stack_rows(outcome.rows))
        refined = getattr(p, REFINED_ATTR, None)
        if refined is None:
            refined = {"refined": {}, "skipped": {}}
            setattr(p, REFINED_ATTR, refined)
        reason = "interrupted before refinement finished; the unrefined embedding was used"
        for prompt, seed, result in zip(prompts, seeds, outcome.results):
            if result is None:
                refined["skipped"][(prompt, seed)] = reason
            else:
                refined["refined"][(prompt, seed)] = summary(result)
        if outcome.stopped:
            _report(p, KEY_REFINE_SKIPPED, reason)
        p.extra_generation_params.update(refine_infotext(a, refined["refined"], refined["skipped"]))

    @staticmethod
    def _maybe_save(p, result, base_name, prompt, seed, a: ScriptArgs, backend, key: tuple) -> None:
        """Keep the refined embedding when Settings → ReNeg asks for it; a file of this refinement is never
        replaced, and a failed save (full disk, ...) is reported without losing the image."""
        if not settings.opt("reneg_save_refined"):
            return
        try:
            library.save_refined(settings.reneg_dir(), base_name, prompt, seed, result.best.detach().cpu().float(),
                                 key, base_model=backend.name, reward=a.reward, prompt=prompt, seed=str(seed),
                                 refined_from=base_name, steps=result.best_step)
        except RenegError as exc:
            _report(p, KEY_REFINED_NOT_SAVED, str(exc))

    def postprocess(self, p, processed, *args):
        attach(p, None)
        for attr in (ARGS_ATTR, REFINED_ATTR):
            if hasattr(p, attr):
                delattr(p, attr)
