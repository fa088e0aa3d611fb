"""The "ReNeg" tab (``on_ui_tabs``): train a global negative embedding on the loaded SD1.x/SD2.x/SDXL checkpoint.

On SDXL the embedding is the pair (context + pooled, packed for the engine) and is saved as a two-tensor
``family: sdxl`` file; "(empty prompt)" starts from the encoded empty prompt (core's SDXL rule, ``docs/sdxl.md``).

The job runs through ``modules.call_queue.wrap_gradio_gpu_call`` (holds the webui's GPU queue, begins/ends
``shared.state``); the browser polls progress like the built-in Train tab (``javascript/reneg.js``): text,
live preview + reward curve. Interrupt stops after the current step and saves a valid (partial) embedding and a
resumable ``.state`` file.
"""
from __future__ import annotations

import gradio as gr

from modules import shared
from modules.call_queue import wrap_gradio_gpu_call
from modules.ui_common import create_refresh_button
from modules.ui_components import ToolButton

from ..core.errors import RenegError
from ..core.train import TrainConfig
from . import library, reward_setup, runtime, settings
from .train_logic import TrainHooks, load_start, parse_prompts, prepare_output, run_training

START_FROM_EMPTY = "(empty prompt)"


def _gradio_major() -> int:
    try:
        return int(str(gr.__version__).split(".")[0])
    except ValueError:
        return 3


def _js(name: str) -> dict:
    return {"_js": name} if _gradio_major() < 4 else {"js": name}


def _start_choices() -> list[str]:
    return [START_FROM_EMPTY] + list(library.scan_embeddings(settings.embedding_dirs())[0])


#: First-try defaults: a few minutes on a consumer GPU (the paper's 4000 steps x batch 64 take GPU-days).
DEFAULTS = dict(steps=50, batch_size=2, micro_batch=1, inference_steps=20, width=512, height=512,
                preview_every=10, save_every=25)


def error_html(message: str) -> str:
    import html

    return f"<div class='error reneg-error'><b>ReNeg training failed:</b> {html.escape(message)}</div>"


def reward_refresh():
    """New reward dropdown choices and the 'not installed' note."""
    choices = settings.installed_rewards()
    note = reward_setup.status_html(choices, settings.rewards_dir())
    return gr.update(choices=choices), gr.update(value=note, visible=bool(note))


def train(id_task, prompts_text, prompts_file, name, start_from, resume, overwrite, steps, batch_size,
          micro_batch, lr, reward_spec, guidance_scale, inference_steps, width, height, seed, preview_every,
          save_every, preview_prompt):
    """Gradio handler (wrapped by wrap_gradio_gpu_call): returns (gallery images, result HTML).

    Problems a user can fix (no prompts, bad name, reward not installed, ...) come back as the tab's error
    message with an empty gallery; inputs and the reward are checked before the model is touched."""
    try:
        return _checked_train(prompts_text, prompts_file, name, start_from, resume, overwrite, steps, batch_size,
                              micro_batch, lr, reward_spec, guidance_scale, inference_steps, width, height, seed,
                              preview_every, save_every, preview_prompt)
    except RenegError as exc:
        print(f"ReNeg training: {exc}", flush=True)
        return [], error_html(str(exc))


def _checked_train(prompts_text, prompts_file, name, start_from, resume, overwrite, steps, batch_size,
                   micro_batch, lr, reward_spec, guidance_scale, inference_steps, width, height, seed,
                   preview_every, save_every, preview_prompt):
    prompts = parse_prompts(prompts_text, prompts_file)
    runtime.check_reward(reward_spec)
    out = prepare_output(settings.reneg_dir(), name, resume=bool(resume), overwrite=bool(overwrite),
                         forbidden=[getattr(shared.cmd_opts, "embeddings_dir", "")])
    config = TrainConfig(
        steps=int(steps), batch_size=int(batch_size), micro_batch=int(micro_batch), lr=float(lr),
        num_inference_steps=int(inference_steps), guidance_scale=float(guidance_scale), height=int(height),
        width=int(width), seed=int(seed), preview_every=int(preview_every), save_every=int(save_every),
        preview_prompt=(preview_prompt or "").strip() or None,
        gradient_checkpointing=False)  # checkpointing is applied around the run (see below), not permanently
    shared.state.job = "ReNeg training"
    shared.state.job_count = config.steps
    shared.state.textinfo = "ReNeg training: loading model and reward"
    with runtime.torch_load_unpatched():
        return _train(prompts, out, config, start_from, resume, overwrite, reward_spec)


def _train(prompts, out, config, start_from, resume, overwrite, reward_spec):
    backend = runtime.current_backend()
    init = load_start(start_from, settings.embedding_dirs(), backend.context_dim, START_FROM_EMPTY)
    reward = runtime.load_reward(reward_spec, backend.device)

    def set_step(step, total):
        shared.state.job_no = step
        shared.state.job_count = total

    hooks = TrainHooks(set_text=runtime.set_textinfo, set_image=shared.state.assign_current_image,
                       set_step=set_step, should_stop=lambda: bool(shared.state.interrupted))
    try:
        with runtime.grad_enabled(), runtime.maybe_checkpointing(backend):
            outcome = run_training(backend, reward, prompts, config, out, resume=bool(resume),
                                   overwrite=bool(overwrite), init_negative=init, hooks=hooks,
                                   metadata={"webui_model": runtime.model_hash()})
    finally:
        runtime.release_reward()
    return outcome.images, outcome.html()


def on_ui_tabs():
    rewards = settings.installed_rewards()
    reward_note = reward_setup.status_html(rewards, settings.rewards_dir())
    d = DEFAULTS
    with gr.Blocks(analytics_enabled=False) as block:
        with gr.Row(equal_height=False):
            with gr.Column():
                gr.HTML("<p>Learn a negative embedding for the loaded SD1.x/SD2.x/SDXL checkpoint by reward "
                        "guidance (ReNeg, CVPR 2025). The result goes to the ReNeg folder (Settings → ReNeg) and "
                        "appears in the ReNeg dropdown of txt2img/img2img.</p>")
                prompts_text = gr.Textbox(label="Training prompts (one per line)", lines=6,
                                          elem_id="reneg_train_prompts")
                prompts_file = gr.Textbox(label="…and/or a prompt file (.txt, .jsonl, .json, .csv, .tsv)",
                                          elem_id="reneg_train_prompts_file")
                with gr.Row():
                    name = gr.Textbox(label="Output name", value="my-reneg", elem_id="reneg_train_name")
                    start_from = gr.Dropdown(label="Start from", choices=_start_choices(), value=START_FROM_EMPTY,
                                             elem_id="reneg_train_start")
                    create_refresh_button(start_from, lambda: None, lambda: {"choices": _start_choices()},
                                          "reneg_train_start_refresh")
                with gr.Row():
                    resume = gr.Checkbox(False, label="Resume from <name>.safetensors.state", elem_id="reneg_train_resume")
                    overwrite = gr.Checkbox(False, label="Overwrite an existing run", elem_id="reneg_train_overwrite")
                with gr.Row():
                    steps = gr.Number(label="Steps", value=d["steps"], precision=0, elem_id="reneg_train_steps")
                    batch_size = gr.Number(label="Batch size", value=d["batch_size"], precision=0,
                                           elem_id="reneg_train_batch")
                    micro_batch = gr.Number(label="Micro batch", value=d["micro_batch"], precision=0,
                                            elem_id="reneg_train_micro_batch")
                    lr = gr.Number(label="Learning rate", value=5e-3, elem_id="reneg_train_lr")
                with gr.Row():
                    reward_spec = gr.Dropdown(label="Reward", choices=rewards, value=settings.default_reward(rewards),
                                              allow_custom_value=True, elem_id="reneg_train_reward")
                    reward_refresh_button = ToolButton(value="\U0001f504", elem_id="reneg_train_reward_refresh",
                                                       tooltip="Reward: re-scan the installed reward weights")
                    guidance_scale = gr.Number(label="CFG scale", value=7.5, elem_id="reneg_train_cfg")
                    inference_steps = gr.Number(label="DDIM steps", value=d["inference_steps"],
                                                precision=0, elem_id="reneg_train_ddim_steps")
                reward_status = gr.HTML(reward_note, visible=bool(reward_note), elem_id="reneg_train_reward_note")
                with gr.Row():
                    width = gr.Slider(64, 1024, value=d["width"], step=64, label="Width", elem_id="reneg_train_width")
                    height = gr.Slider(64, 1024, value=d["height"], step=64, label="Height", elem_id="reneg_train_height")
                    seed = gr.Number(label="Seed", value=0, precision=0, elem_id="reneg_train_seed")
                with gr.Row():
                    preview_every = gr.Number(label="Preview every N steps (0: off)", value=d["preview_every"],
                                              precision=0, elem_id="reneg_train_preview_every")
                    save_every = gr.Number(label="Save every N steps (0: end only)", value=d["save_every"],
                                           precision=0, elem_id="reneg_train_save_every")
                    preview_prompt = gr.Textbox(label="Preview prompt (default: first prompt)",
                                                elem_id="reneg_train_preview_prompt")
                with gr.Row():
                    train_button = gr.Button("Train", variant="primary", elem_id="reneg_train_button")
                    interrupt_button = gr.Button("Interrupt", elem_id="reneg_train_interrupt")
            with gr.Column():
                gr.Text(elem_id="reneg_train_output", value="", show_label=False)  # progress bar goes here
                gallery = gr.Gallery(label="Before / after / reward curve", show_label=False,
                                     elem_id="reneg_train_gallery", columns=3, object_fit="contain")
                gr.HTML(elem_id="reneg_train_progress", value="")
                result = gr.HTML(elem_id="reneg_train_result", value="")
        dummy = gr.Textbox(visible=False, elem_id="reneg_train_task_id")
        reward_refresh_button.click(fn=reward_refresh, inputs=[], outputs=[reward_spec, reward_status])
        # clear the previous run's result and images first (never from JS: gradio 3.41 gives the HTML's wrapper
        # and its inner div the same id, and emptying the wrapper detaches the component), then train
        train_button.click(fn=lambda: ([], ""), inputs=[], outputs=[gallery, result], queue=False).then(
            fn=wrap_gradio_gpu_call(train, extra_outputs=[[]]),
            inputs=[dummy, prompts_text, prompts_file, name, start_from, resume, overwrite, steps, batch_size,
                    micro_batch, lr, reward_spec, guidance_scale, inference_steps, width, height, seed,
                    preview_every, save_every, preview_prompt],
            outputs=[gallery, result], **_js("reneg_start_training"))
        interrupt_button.click(fn=lambda: shared.state.interrupt(), inputs=[], outputs=[])
    return [(block, "ReNeg", "reneg_tab")]
