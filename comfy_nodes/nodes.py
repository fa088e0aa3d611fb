"""The ReNeg ComfyUI nodes (V3 schema, ``comfy_api.latest``). Imported only inside a running ComfyUI.

Nodes stay thin: they validate inputs, resolve files through :mod:`.files`, and call the host-agnostic engine in
``core`` through :mod:`.model_adapter` (``*_run`` modules hold the per-node work so tests can call it directly).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from typing_extensions import override

import folder_paths
from comfy_api.latest import ComfyExtension, io, ui

from ..core.errors import RenegError
from ..core.released import PACK_EMBEDDINGS_DIR, download_released, released_embeddings
from ..core.rewards import REWARD_NAMES
from ..core.rewards.weights import REWARDS_DIR_ENV
from ..core.train import TrainConfig
from . import embedding_run, files, train_modes
from .conditioning import apply_strength, pack, pooled_of, row_tensors
from .model_adapter import empty_conditioning
from .pixart import T5_WIDTH, attended_rows
from .sdxl import conditioning_of, is_sdxl_width, packed_of

log = logging.getLogger("reneg")
CATEGORY = "conditioning/reneg"
#: Custom socket type for reward models (prefixed so it cannot be wired to other packs' REWARD sockets).
Reward = io.Custom("RENEG_REWARD")

files.register_folders(folder_paths, PACK_EMBEDDINGS_DIR)
# 'auto' reward weights: core looks in $RENEG_REWARDS_DIR by file/repo name; default it to models/reneg_rewards.
os.environ.setdefault(REWARDS_DIR_ENV, folder_paths.get_folder_paths(files.REWARD_FOLDER)[0])


def _embedding_dirs() -> list[str]:
    return folder_paths.get_folder_paths(files.EMBEDDING_FOLDER)


def _reward_dirs() -> list[str]:
    return folder_paths.get_folder_paths(files.REWARD_FOLDER)


def _released_by_filename() -> dict:
    return {e.filename: e for e in released_embeddings().values()}


def _released_usable() -> dict:
    return files.usable_released(_released_by_filename())


def unknown_embedding_message(choice: str) -> str | None:
    """Why ``choice`` cannot be loaded (None: a file on disk or a usable released file)."""
    return files.embedding_problem(choice, _released_by_filename(),
                                   lambda name: folder_paths.get_full_path(files.EMBEDDING_FOLDER, name),
                                   _embedding_dirs())


def resolve_embedding(choice: str) -> Path:
    """Local file for a dropdown entry; a released file missing locally is downloaded (sha256-verified)."""
    name = files.check_relative_name(choice, "embedding name")
    local = folder_paths.get_full_path(files.EMBEDDING_FOLDER, name)
    if local is not None:
        return Path(local)
    released = _released_by_filename().get(name)
    if released is None:
        raise RenegError(f"Embedding '{name}' not found in {_embedding_dirs()}. Put the file into models/reneg/ "
                         "and refresh the node list.")
    target_dir = _embedding_dirs()[0]
    log.info("ReNeg: downloading released embedding %s to %s", released.name, target_dir)
    return download_released(released.name, target_dir)


# ---------------------------------------------------------------------------------------------------------------
class LoadEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        found = folder_paths.get_filename_list(files.EMBEDDING_FOLDER)
        released = _released_usable()
        by_width = {w: ", ".join(files.released_for_width(released, w)) for w in (768, 1024, T5_WIDTH)}
        return io.Schema(
            node_id="ReNegLoadEmbedding",
            display_name="Load ReNeg Embedding",
            category=CATEGORY,
            description="Load a ReNeg negative embedding as the negative CONDITIONING (connect it to a KSampler's "
                        "negative). Files come from models/reneg/ and the pack's embeddings/ folder; released "
                        "embeddings not yet on disk are downloaded on first use (sha256-verified).",
            inputs=[
                io.Combo.Input("embedding", options=files.embedding_choices(found, _released_by_filename()),
                               tooltip="A ReNeg embedding from models/reneg/ (press R after adding files). It "
                                       "must match the checkpoint: released files for SD1.x models: "
                                       f"{by_width[768]}; for SD2.x (768-v) models: {by_width[1024]}; for "
                                       f"PixArt-α: {by_width[T5_WIDTH]} (given to the KSampler as the rows "
                                       "PixArt attends to); SDXL files you trained (context + pooled) fit SDXL "
                                       "models and their fine-tunes."),
                io.Float.Input("strength", default=1.0, min=-1.0, max=3.0, step=0.05,
                               tooltip="Blend with the empty-prompt negative: 0 = plain empty prompt, 1 = the "
                                       "embedding as trained."),
                io.Clip.Input("clip",
                              tooltip="The checkpoint's CLIP (PixArt-α: its T5-XXL, Load CLIP type pixart): the "
                                      "embedding is checked against the model family (a mismatch is an error "
                                      "here, not deep inside the sampler) and strength blends with its empty "
                                      "prompt."),
            ],
            outputs=[io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def validate_inputs(cls, embedding=None) -> bool | str:
        # a linked (computed) name is not known at queue time: execute() checks it then
        if embedding is None:
            return True
        problem = unknown_embedding_message(embedding) or embedding_run.file_problem(
            folder_paths.get_full_path(files.EMBEDDING_FOLDER, embedding))  # a broken file: its one clear reason
        return problem or True

    @classmethod
    def fingerprint_inputs(cls, embedding, strength=1.0, clip=None):
        path = folder_paths.get_full_path(files.EMBEDDING_FOLDER, embedding)
        if path is None:
            return embedding
        st = os.stat(path)
        return f"{path}:{st.st_mtime_ns}:{st.st_size}"

    @classmethod
    def execute(cls, embedding, clip, strength=1.0) -> io.NodeOutput:
        if clip is None:
            raise RenegError("Load ReNeg Embedding needs the CLIP input: connect the checkpoint's CLIP.")
        path = resolve_embedding(embedding)
        null, pooled = empty_conditioning(clip)
        tensor = embedding_run.load_for_clip(path, embedding, int(null.shape[-1]), _released_usable())
        if null.shape[-1] == T5_WIDTH and strength != 1.0 and null.shape != tensor.shape:
            raise RenegError(f"{embedding} attends {tensor.shape[1]} rows but PixArt's empty prompt attends "
                             f"{null.shape[1]}: strength can only blend negatives of the empty prompt's layout "
                             "(e.g. the released file). Set strength to 1.")
        if is_sdxl_width(null.shape[-1]):  # SDXL: context and pooled both blend with the empty prompt's
            return io.NodeOutput(conditioning_of(apply_strength(tensor, packed_of(null, pooled, "The CLIP input"),
                                                                strength)))
        tensor = apply_strength(tensor, null, strength)
        return io.NodeOutput(pack(tensor, pooled))


# ---------------------------------------------------------------------------------------------------------------
class LoadReward(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReNegLoadReward",
            display_name="Load ReNeg Reward",
            category=CATEGORY,
            description="A differentiable reward model for ReNeg refinement/training (HPSv2.1 by default).",
            inputs=[
                io.Combo.Input("reward", options=list(REWARD_NAMES), default="hpsv2.1",
                               tooltip="'tiny' and 'synthetic' are test rewards with random/known weights."),
                io.Combo.Input("weights", options=files.reward_weight_choices(_reward_dirs()),
                               default=files.AUTO_WEIGHTS,
                               tooltip="A file or model folder from models/reneg_rewards/, or 'auto' (look in "
                                       "models/reneg_rewards/ by the reward's file name, then the Hugging Face "
                                       "cache/hub)."),
                io.String.Input("mix", default="", optional=True,
                                tooltip="Optional weighted mix instead of one reward, e.g. "
                                        "'hpsv2.1:1,aesthetic:0.5' (weights found as with 'auto')."),
            ],
            outputs=[Reward.Output(display_name="reward")],
        )

    @classmethod
    def validate_inputs(cls, weights=None) -> bool | str:
        from .reward_run import weights_problem

        return (weights is not None and weights_problem(weights, _reward_dirs())) or True

    @classmethod
    def execute(cls, reward, weights=files.AUTO_WEIGHTS, mix="") -> io.NodeOutput:
        from .reward_run import build_node_reward

        return io.NodeOutput(build_node_reward(reward, weights, mix, _reward_dirs()))


# ---------------------------------------------------------------------------------------------------------------
class Refine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReNegRefine",
            display_name="ReNeg Refine (per prompt)",
            category=CATEGORY,
            description="Type the prompt here: this node encodes it (the positive output, the same as CLIP Text "
                        "Encode) and refines the negative embedding for it by gradient ascent on the reward "
                        "(ReNeg per-prompt refinement). Feed positive and refined_negative to a KSampler, and "
                        "give the KSampler the same seed and latent. Batches: one prompt per line (or one for all "
                        "rows); every row of the latent batch gets its own refined negative, all refined at "
                        "once. guaranteed_image is the refinement's own DDIM render of each refined negative: "
                        "its reward is never below the start negative's (a KSampler with another sampler can "
                        "differ).",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.x/SD2.x, SDXL or PixArt-α checkpoint's MODEL (the one the "
                                                "KSampler uses)."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP (PixArt-α: its T5-XXL): encodes the prompt(s)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE: decodes the images the reward scores."),
                io.Conditioning.Input("negative", tooltip="The negative to start from (e.g. Load ReNeg "
                                                          "Embedding); the same start for every row."),
                Reward.Input("reward", tooltip="The reward to maximise (Load ReNeg Reward)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The positive prompt: encoded for the KSampler (positive output) and the "
                                        "text the reward scores the images against. For a batch: one prompt per "
                                        "line, row by row (or a single line for every row); the number of lines "
                                        "must match the latent's batch size."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Noise seed: use the KSampler's seed (link one Int node into both) so the "
                                     "refinement is for the image you sample. A batch is drawn as the KSampler "
                                     "draws it (all rows from this one seed). Fixed: it does not change on Run."),
                io.Int.Input("sampling_steps", default=30, min=1, max=1000,
                             tooltip="DDIM steps of the generation the reward is computed on (use the "
                                     "KSampler's steps)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale during refinement (use the KSampler's)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8,
                             tooltip="Image width (ignored when latent is connected)."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8,
                             tooltip="Image height (ignored when latent is connected)."),
                io.Int.Input("max_steps", default=10, min=1, max=1000, tooltip="Gradient steps at most."),
                io.Int.Input("patience", default=3, min=1, max=1000,
                             tooltip="Stop a row after this many steps without a better reward."),
                io.Float.Input("lr", default=5e-3, min=1e-6, max=1.0, step=1e-4, round=1e-6,
                               tooltip="Learning rate of the refinement (Adam)."),
                io.Latent.Input("latent", optional=True,
                                tooltip="The KSampler's latent (connect the same Empty Latent Image): its size "
                                        "replaces width/height and its batch size is the number of rows. Not "
                                        "connected: one row per prompt line."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive",
                                       tooltip="The prompt(s) encoded as CLIP Text Encode does, one row per "
                                               "image: the KSampler's positive."),
                io.Conditioning.Output(display_name="refined_negative",
                                       tooltip="One refined negative per batch row: the KSampler's negative."),
                io.String.Output(display_name="reward_trace",
                                 tooltip="JSON: per row, the reward of each iterate, the best step, start and "
                                         "best reward."),
                io.Image.Output(display_name="guaranteed_image",
                                tooltip="The refinement's own DDIM render of each refined negative (same seed): "
                                        "the image whose reward is guaranteed >= the start negative's."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, negative, reward, prompt, seed, sampling_steps, cfg, width,
                height, max_steps, patience, lr, latent=None) -> io.NodeOutput:
        from .refine_run import encode_positive, parse_prompt_list, prompts_for_rows, refine_conditioning
        from .refine_run import batch_positive

        rows = None if latent is None else int(latent["samples"].shape[0])
        prompts = prompts_for_rows(parse_prompt_list(prompt), rows)
        encoded = {p: encode_positive(clip, p) for p in dict.fromkeys(prompts)}
        positive = batch_positive([encoded[p] for p in prompts] if len(encoded) > 1 else [encoded[prompts[0]]],
                                  prompts)
        result = refine_conditioning(model, vae, [encoded[p] for p in prompts], negative, reward, prompts=prompts,
                                     seed=seed, num_inference_steps=sampling_steps, guidance_scale=cfg,
                                     width=width, height=height, max_steps=max_steps, patience=patience, lr=lr,
                                     latent=latent)
        rows_info = result.rows
        trace = json.dumps(rows_info[0] if len(rows_info) == 1 else {"rows": rows_info})
        return io.NodeOutput(positive, result.conditioning, trace, result.image, ui=ui.PreviewText(trace))


# ---------------------------------------------------------------------------------------------------------------
class TrainGlobal(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReNegTrainGlobal",
            display_name="ReNeg Train Global",
            category=CATEGORY,
            description="Train one negative embedding for many prompts (ReNeg global training). Saves "
                        "models/reneg/<save_name>.safetensors (+ .state to continue, a CSV log and a reward "
                        "curve) every save_every steps, on interrupt and at the end. Run it again with more "
                        "steps to train further ('continue').",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.x/SD2.x, SDXL or PixArt-α checkpoint's MODEL to train for."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP (PixArt-α: its T5-XXL, which encodes all "
                                              "prompts once, before training): encodes the training prompts."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE: decodes the images the reward scores."),
                Reward.Input("reward", tooltip="The reward to maximise (Load ReNeg Reward)."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="One training prompt per line (used when prompts_file is empty)."),
                io.String.Input("prompts_file", default="",
                                tooltip="Optional prompt file/folder (.txt/.jsonl/.json/.csv/.tsv); relative "
                                        "paths are looked up in ComfyUI's input folder."),
                io.Int.Input("steps", default=1000, min=1, max=1_000_000,
                             tooltip="Total optimizer steps. With if_exists 'continue', raise it to train a saved "
                                     "run further (2 -> 4 trains 2 more steps)."),
                io.Int.Input("batch_size", default=8, min=1, max=4096,
                             tooltip="Samples per optimizer step (the paper uses 64)."),
                io.Int.Input("micro_batch", default=1, min=1, max=4096,
                             tooltip="Samples per forward/backward (memory); does not change the result."),
                io.Float.Input("lr", default=5e-3, min=1e-6, max=1.0, step=1e-4, round=1e-6,
                               tooltip="Learning rate (AdamW, cosine schedule)."),
                io.String.Input("save_name", default="reneg_negative",
                                tooltip="File name in models/reneg/ (.safetensors added)."),
                io.Combo.Input("if_exists", options=list(train_modes.IF_EXISTS), default=train_modes.CONTINUE,
                               tooltip="When save_name already has a run: 'continue' it from its saved state "
                                       "(only steps may change), 'restart' it from step 0 (replaces its files), "
                                       "or keep it and save under a 'new name' (<save_name>_00002, ...; every "
                                       "Run trains a new one)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the training draws (prompts, noise, timesteps). Fixed: a second Run "
                                     "continues the same run instead of starting a different one."),
                io.Int.Input("sampling_steps", default=30, min=1, max=1000,
                             tooltip="DDIM steps of the generations trained on (the paper: 30)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale during training (the paper: 7.5)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8, tooltip="Training image width."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Training image height."),
                io.Int.Input("save_every", default=100, min=0, max=1_000_000,
                             tooltip="Save the embedding and state every N steps (0: only at the end)."),
                io.Int.Input("preview_every", default=50, min=0, max=1_000_000,
                             tooltip="Render a preview every N steps (costs one full generation; 0: never)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="negative"),
                io.Image.Output(display_name="reward_curve"),
            ],
            is_output_node=True,  # it writes the embedding: a graph may consist of training alone
        )

    @classmethod
    def validate_inputs(cls, save_name=None, if_exists=None) -> bool | str:
        try:  # linked (computed) values are not known at queue time (None): execute() checks them then
            if save_name is not None:
                files.check_relative_name(save_name, "save name")
        except RenegError as exc:
            return str(exc)
        if if_exists is not None and if_exists not in train_modes.IF_EXISTS:
            return f"if_exists must be one of {', '.join(train_modes.IF_EXISTS)} (got {if_exists!r})."
        return True

    @classmethod
    def fingerprint_inputs(cls, if_exists=train_modes.CONTINUE, **kwargs):
        # 'new name' trains a new embedding on every Run; otherwise outputs are cached on the inputs as usual
        return time.time_ns() if if_exists == train_modes.NEW_NAME else if_exists

    @classmethod
    def execute(cls, model, clip, vae, reward, prompts, prompts_file, steps, batch_size, micro_batch, lr,
                save_name, if_exists, seed, sampling_steps, cfg, width, height, save_every,
                preview_every) -> io.NodeOutput:
        from .train_run import reward_curve_image, train_embedding

        prompt_list = _training_prompts(prompts, prompts_file)
        config = TrainConfig(steps=steps, batch_size=batch_size, micro_batch=min(micro_batch, batch_size), lr=lr,
                             num_inference_steps=sampling_steps, guidance_scale=cfg, height=height, width=width,
                             seed=seed, save_every=save_every, preview_every=preview_every)
        plan = train_modes.plan_run(_embedding_dirs()[0], save_name, if_exists, config, prompt_list)
        result = train_embedding(model, clip, vae, reward, prompt_list, plan, config)
        out = plan.out
        negative = result.negative
        if negative.shape[-1] == T5_WIDTH:  # PixArt: the KSampler gets the attended rows (comfy_nodes/pixart.py)
            negative = attended_rows(negative.detach().cpu().float())
        return io.NodeOutput(conditioning_of(negative) if is_sdxl_width(negative.shape[-1]) else pack(negative),
                             reward_curve_image(out),
                             ui=ui.PreviewText(f"{plan.describe(result.total_steps)}: saved {out} after "
                                               f"{result.step}/{result.total_steps} steps"))


def _training_prompts(prompts: str, prompts_file: str) -> list[str]:
    if prompts_file.strip():
        from ..core.prompts import load_prompts

        path = Path(prompts_file.strip()).expanduser()
        if not path.is_absolute():
            path = Path(folder_paths.get_input_directory()) / path
        return load_prompts(path)
    lines = [line.strip() for line in prompts.splitlines() if line.strip()]
    if not lines:
        raise RenegError("No training prompts: write one prompt per line, or give a prompts_file.")
    return lines


# ---------------------------------------------------------------------------------------------------------------
class SaveEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReNegSaveEmbedding",
            display_name="Save ReNeg Embedding",
            category=CATEGORY,
            description="Save a negative CONDITIONING as a ReNeg .safetensors (with metadata) in models/reneg/; a "
                        "batch (ReNeg Refine on a latent batch: one refined negative per row) is saved as one file "
                        "per row, in row order.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The negative to save (e.g. from ReNeg Refine or "
                                                              "ReNeg Train Global); one file per batch row."),
                io.String.Input("filename_prefix", default="negative",
                                tooltip="File name start; saved as models/reneg/<prefix>_00001.safetensors."),
                io.String.Input("note", default="", optional=True, tooltip="Stored in the file's metadata."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, conditioning, filename_prefix, note="") -> io.NodeOutput:
        rows = row_tensors(conditioning, "Save ReNeg Embedding")
        if is_sdxl_width(rows[0].shape[-1]):  # SDXL: each row saved as the two-tensor file (context + pooled)
            packed = packed_of(conditioning[0][0], pooled_of(conditioning), "Save ReNeg Embedding")
            rows = [packed[i:i + 1] for i in range(packed.shape[0])]
        paths = [embedding_run.save_new(_embedding_dirs()[0], filename_prefix, row, created_by="reneg-comfyui",
                                        note=note) for row in rows]
        for path in paths:
            log.info("ReNeg: saved %s", path)
        return io.NodeOutput(ui=ui.PreviewText("\n".join(str(p) for p in paths)))


NODES: list[type[io.ComfyNode]] = [LoadEmbedding, LoadReward, Refine, TrainGlobal, SaveEmbedding]


class RenegExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> RenegExtension:
    return RenegExtension()


__all__ = ["comfy_entrypoint", "NODES"]
