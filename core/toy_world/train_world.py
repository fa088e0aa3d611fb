"""Train the TOY WORLD from scratch: VAE (+ its decoder further), the reward, text encoder + UNet (``toy``, then
``toy-more``) and a second UNet (``toy-2``).

    python -m reneg.core.toy_world.train_world [--out DIR] [--threads 1] [--stages toy,toy-more,toy-2]

Reproducible: every stage draws from its own seeded ``torch.Generator`` / ``random.Random`` and the data is a pure
function of its seed, so the same seed and thread count give the same weights (CPU). About 90 minutes at 1 thread on
a busy 2-core machine (VAE 7.7, vae-decoder 7.1, reward 1.4, toy 34.7, toy-more 35.8, toy-2 2.5 minutes; reward may
run beside toy; ``world.json`` has the measured seconds); 32 minutes with ``--threads 2`` on a quiet one. Writes
the fp16 ``.safetensors`` files the pack ships in ``core/toy_world/weights/`` and ``world.json`` (recipe, timings,
sizes). Toy models for demos and tests -- not for art.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import data
from .models import (MANIFEST, REWARD_FILE, TEXT_ENCODER_FILE, TOY_GENERATORS, VAE_FILE, WEIGHTS_DIR,
                     build_reward_clip, build_scheduler, build_text_encoder, build_unet, build_vae, save_weights,
                     seeded)


@dataclass
class WorldRecipe:
    data_seed: int = 0
    n_images: int = 10000
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_crop: int = 32            #: < 32: train on random crops (cheaper); whole images since GroupNorm has 1 group
    vae_lr: float = 4e-3
    vae_kl: float = 1e-6
    decoder_steps: int = 800      #: stage ``vae-decoder``: train the VAE decoder further, encoder frozen (the latents,
    #: hence the UNets, stay valid). The 1500-step decoder drew green AND blue on white as the same teal (33,131,129)
    #: / (33,124,144): foreground error 64 / 83 of 255 there vs 18-27 elsewhere; after this stage 12-17 everywhere
    decoder_lr: float = 2e-3
    decoder_fg_weight: float = 3.0  #: extra loss weight on foreground pixels (far from the background colour)
    unet_steps: int = 2200
    unet2_steps: int = 300
    unet2_images: int = 3000      #: toy-2's own dataset (seed and defect rate from TOY_GENERATORS)
    unet_batch: int = 64          #: a step costs about the same at 16 and 64 on CPU (overhead-bound): 4x the data
    unet_lr: float = 2e-3
    unet_warmup: int = 100
    train_tokens: bool = True     #: train the text encoder's token table too, as CLIP does (its seeded std-0.02 rows
    #: made two captions' encodings ~97% alike); not the decisive change on its own (see high_noise_share)
    loss_weighting: str = "min-snr-v"  #: "min-snr-eps": min(snr,5)/snr on the eps loss; "min-snr-v": min(snr+1,5)/snr
    #: (the v-loss at high noise, where the caption decides colour and place and the eps loss is ~0)
    high_noise_share: float = 0.5  #: share of each batch drawn from t >= high_noise_from (the rest uniform). The
    #: 800-step uniform-t world ignored its captions (cond vs uncond denoising loss within 0.2%); 300-step probes
    #: (lr 2e-3, batch 16): uniform t 0.1-0.2% either weighting, all t >= 700 11.8% at t=900 (lr 5e-3: 0.3%)
    high_noise_from: int = 700
    ema: float = 0.995
    unet_more_steps: int = 1800   #: stage ``toy-more``: continue ``toy``'s UNet + text encoder (fresh AdamW + cosine,
    #: own data order). The 2200-step UNet was under-trained: 300 more steps lifted held-out colour+position accuracy
    #: 45.8% -> 62.5% (position 75% -> 96%)
    unet_more_lr: float = 1e-3
    reward_scenes: int = 3000
    reward_steps: int = 400
    reward_batch: int = 32
    reward_lr: float = 1e-3
    threads: int = 1              #: on a busy 2-core machine two OpenMP threads ran 3-8x slower than one


def _log(msg: str) -> None:
    print(f"[toy-world {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))
    return f


def _optimizer(params, lr: float, steps: int, weight_decay: float = 1e-2, warmup: int = 200):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, min(warmup, steps // 10 + 1)))


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N,H,W,3]`` -> float ``[N,3,H,W]`` in ``[-1, 1]`` (the VAE's range)."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------- VAE
def train_vae(images: torch.Tensor, recipe: WorldRecipe, steps: Optional[int] = None, log=_log):
    """KL-regularised autoencoder (L1 + MSE reconstruction) on random crops; returns the trained VAE."""
    steps = recipe.vae_steps if steps is None else steps
    vae = seeded(recipe.data_seed + 11, build_vae)
    gen = torch.Generator().manual_seed(recipe.data_seed + 12)
    opt, sched = _optimizer(vae.parameters(), recipe.vae_lr, steps, 0.0)
    vae.train()
    for step in range(steps):
        idx = torch.randint(len(images), (recipe.vae_batch,), generator=gen)
        x = to_model_range(images[idx])
        if recipe.vae_crop < x.shape[-1]:
            top, left = (int(v) * 4 for v in torch.randint((x.shape[-1] - recipe.vae_crop) // 4 + 1, (2,),
                                                            generator=gen))
            x = x[..., top:top + recipe.vae_crop, left:left + recipe.vae_crop]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + recipe.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            log(f"vae step {step + 1}/{steps} loss {loss.item():.4f}")
    return vae.eval().requires_grad_(False)


def train_vae_decoder(vae, images: torch.Tensor, recipe: WorldRecipe, steps: Optional[int] = None, log=_log):
    """Train ``vae``'s decoder further on posterior samples of the frozen encoder (L1 + MSE, foreground pixels
    weighted ``1 + decoder_fg_weight``); the encoder and so every latent are unchanged."""
    steps = recipe.decoder_steps if steps is None else steps
    gen = torch.Generator().manual_seed(recipe.data_seed + 13)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt, sched = _optimizer(params, recipe.decoder_lr, steps, 0.0)
    vae.train()
    for step in range(steps):
        idx = torch.randint(len(images), (recipe.vae_batch,), generator=gen)
        x = to_model_range(images[idx])
        with torch.no_grad():
            post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        corner = x[..., :1, :1]  # scenes are a shape on a plain background: a corner pixel is background
        w = 1.0 + recipe.decoder_fg_weight * ((x - corner).abs().amax(1, keepdim=True) > 0.3).float()
        loss = (w * ((rec - x).abs() + (rec - x) ** 2)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            log(f"vae decoder step {step + 1}/{steps} loss {loss.item():.4f}")
    return vae.eval().requires_grad_(False)


def scaling_factor(vae, images: torch.Tensor) -> float:
    """SD's latent scaling: 1 / std of the posterior means (of the first 2048 images)."""
    means, _ = encode_all(vae, images[:2048])
    return float(1.0 / means.std())


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (unscaled latents)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(to_model_range(images[i:i + batch])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """VAE round trip (posterior mean), float ``[N,3,H,W]`` in ``[0, 1]``."""
    out = []
    for i in range(0, len(images), batch):
        z = vae.encode(to_model_range(images[i:i + batch])).latent_dist.mean
        out.append((vae.decode(z).sample / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- UNet (+ text encoder)
class _Ema:
    def __init__(self, modules: list[torch.nn.Module], decay: float):
        self.decay, self.modules = decay, modules
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for m, s in zip(self.modules, self.shadow):
            for p, q in zip(m.parameters(), s.parameters()):
                q.lerp_(p.detach(), 1 - d)


class _Captions:
    """Training captions (with dropout / partial / defect mentions) -> token ids, cached per string."""

    def __init__(self, scenes: list[data.Scene], seed: int):
        from ..clip_tokenizer import offline_clip_tokenizer

        self.scenes, self.rng, self.cache = scenes, random.Random(seed), {}
        self.tokenizer = offline_clip_tokenizer()

    def ids(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            tok = self.tokenizer(missing, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            self.cache.update(zip(missing, tok.input_ids))
        return torch.stack([self.cache[t] for t in texts])

    def batch(self, idx: list[int]) -> torch.Tensor:
        return self.ids([data.training_caption(self.scenes[i], self.rng) for i in idx])


def train_unet(name: str, latents: tuple[torch.Tensor, torch.Tensor], scaling: float, scenes: list[data.Scene],
               recipe: WorldRecipe, text_encoder=None, steps: Optional[int] = None, init_unet=None, log=_log,
               init_text_encoder=None, lr: Optional[float] = None, seed_offset: int = 0,
               snapshot: Optional[Callable[[int, torch.nn.Module, torch.nn.Module], None]] = None,
               snapshot_every: int = 0):
    """Epsilon-prediction diffusion training with caption dropout (CFG), min-SNR-5 weighting (``recipe.loss_weighting``)
    and part of each batch at high noise (``recipe.high_noise_share``), where the caption decides the image.

    With ``text_encoder=None`` a text encoder is trained jointly (fresh, or ``init_text_encoder``'s weights);
    otherwise it stays frozen (shared). ``seed_offset`` gives a continuation its own data order; ``snapshot(step,
    unet, te)`` receives the EMA models every ``snapshot_every`` steps. Returns the EMA ``(unet, text_encoder)``.
    """
    spec = TOY_GENERATORS[name]
    steps = (recipe.unet_steps if text_encoder is None else recipe.unet2_steps) if steps is None else steps
    unet = seeded(spec.seed + 100, build_unet, spec.block_out_channels)
    if init_unet is not None:
        unet.load_state_dict(init_unet.state_dict())
    joint = text_encoder is None
    te = seeded(spec.seed + 200, build_text_encoder) if joint else text_encoder
    if joint and init_text_encoder is not None:
        te.load_state_dict(init_text_encoder.state_dict())
    te.train(joint).requires_grad_(joint)
    if not recipe.train_tokens:
        te.get_input_embeddings().requires_grad_(False)
    params = [p for p in list(unet.parameters()) + list(te.parameters()) if p.requires_grad]
    opt, sched = _optimizer(params, recipe.unet_lr if lr is None else lr, steps, warmup=recipe.unet_warmup)
    ema = _Ema([unet, te] if joint else [unet], recipe.ema)
    scheduler = build_scheduler()
    ac = scheduler.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(spec.seed + 300 + seed_offset)
    captions = _Captions(scenes, spec.seed + 400 + seed_offset)
    means, stds = latents
    unet.train()
    for step in range(steps):
        idx = torch.randint(len(means), (recipe.unet_batch,), generator=gen)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, len(ac), (len(idx),), generator=gen)
        if recipe.high_noise_share > 0:
            n_high = round(recipe.high_noise_share * len(idx))
            t[:n_high] = torch.randint(recipe.high_noise_from, len(ac), (n_high,), generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with torch.set_grad_enabled(joint):
            ctx = te(captions.batch(idx.tolist()))[0]
        pred = unet(zt, t, encoder_hidden_states=ctx).sample
        snr = a.view(-1) / (1 - a.view(-1))
        w = torch.clamp(snr + (1.0 if recipe.loss_weighting == "min-snr-v" else 0.0), max=5.0) / snr
        loss = (w * ((pred - noise) ** 2).mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update(step)
        if log and (step + 1) % 50 == 0:
            log(f"{name} unet step {step + 1}/{steps} loss {loss.item():.4f}")
        if snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0:
            snapshot(step + 1, ema.shadow[0], ema.shadow[1] if joint else text_encoder)
    shadow_unet = ema.shadow[0]
    shadow_te = ema.shadow[1] if joint else text_encoder
    return shadow_unet, shadow_te.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- reward
def reward_pairs(seed: int, n: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Captions, clean images and the same scenes with 1-2 defects (uint8), for preference training."""
    rng = random.Random(seed)
    caps, clean, bad = [], [], []
    for i in range(n):
        scene = data.scene_at(seed, i, defect_prob=0.0)
        k = 1 if rng.random() < 0.7 else 2
        defective = data.replace(scene, defects=tuple(sorted(rng.sample(data.DEFECTS, k), key=data.DEFECTS.index)))
        caps.append(scene.caption())
        clean.append(data.render(scene))
        bad.append(data.render(defective))
    import numpy as np
    return caps, torch.from_numpy(np.stack(clean)), torch.from_numpy(np.stack(bad))


def train_reward(vae, recipe: WorldRecipe, steps: Optional[int] = None, n_scenes: Optional[int] = None, log=_log):
    """Contrastive CLIP on VAE round trips of rendered scenes (what generated images look like): for each caption
    its clean image beats the other images of the batch AND its own defective version; for each clean image its
    caption beats the other captions. It never sees a generator's output."""
    import open_clip

    n = recipe.reward_scenes if n_scenes is None else n_scenes
    steps = recipe.reward_steps if steps is None else steps
    caps, clean_u8, bad_u8 = reward_pairs(recipe.data_seed + 5000, n)
    clean, bad = reconstruct(vae, clean_u8), reconstruct(vae, bad_u8)
    from ..rewards.preprocess import OPENAI_MEAN, OPENAI_STD, normalize

    model = build_reward_clip(seed=recipe.data_seed + 21)
    model.train().requires_grad_(True)
    tokenizer = open_clip.SimpleTokenizer(context_length=77)
    tokens = {c: tokenizer([c])[0] for c in dict.fromkeys(caps)}
    cap_ids = torch.tensor([list(tokens).index(c) for c in caps])
    opt, sched = _optimizer(model.parameters(), recipe.reward_lr, steps)
    gen = torch.Generator().manual_seed(recipe.data_seed + 22)
    for step in range(steps):
        idx = torch.randint(n, (recipe.reward_batch,), generator=gen)
        text = model.encode_text(torch.stack([tokens[caps[i]] for i in idx.tolist()]), normalize=True)
        imgs = normalize(torch.cat([clean[idx], bad[idx]]), OPENAI_MEAN, OPENAI_STD)
        feats = model.encode_image(imgs, normalize=True)
        img_c, img_b = feats.chunk(2)
        scale = model.logit_scale.exp().clamp(max=100)
        same = cap_ids[idx][:, None] == cap_ids[idx][None, :]
        eye = torch.eye(len(idx), dtype=torch.bool)
        mask = same & ~eye  # other images of the same caption are not negatives
        l_t2i = scale * text @ img_c.T
        l_t2i = torch.cat([l_t2i.masked_fill(mask, -1e4), scale * (text * img_b).sum(-1, keepdim=True)], 1)
        l_i2t = (scale * img_c @ text.T).masked_fill(mask, -1e4)
        target = torch.arange(len(idx))
        loss = F.cross_entropy(l_t2i, target) + F.cross_entropy(l_i2t, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            log(f"reward step {step + 1}/{steps} loss {loss.item():.4f}")
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- main
@dataclass
class WorldReport:
    recipe: dict
    seconds: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    notes: str = ("TOY WORLD for demos and tests, not for art: 32x32 scenes of one coloured shape; "
                  "see reneg/core/toy_world/data.py.")


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


STAGES = ("vae", "vae-decoder", "reward", "toy", "toy-more", "toy-2")  # reward and toy may also run side by side (two processes)


def _load_file(module: torch.nn.Module, out: Path, fname: str) -> torch.nn.Module:
    """Reload a stage's output from its (fp16) file: later stages see exactly the shipped weights, so a run of
    all stages in one process equals stages run one by one (``--stages``)."""
    from .models import read_weights

    module.load_state_dict(read_weights(fname, out), strict=True)
    return module.eval().requires_grad_(False)


def build_world(out: Path = WEIGHTS_DIR, recipe: Optional[WorldRecipe] = None, stages: tuple[str, ...] = STAGES,
                log=_log, snapshot_every: int = 0) -> WorldReport:
    """Train the toy-world models of ``stages`` and write their weight files + ``world.json`` to ``out``.

    ``reward`` and ``toy`` need the VAE file, ``toy-more`` and ``toy-2`` also the text encoder and ``toy`` UNet
    files (from earlier stages or runs), so ``reward`` may run as a second process beside ``toy``.
    ``snapshot_every``: also write ``toy-more``'s EMA weights every N steps to ``out/snapshots/<step>/``.
    """
    from .models import read_manifest

    recipe = recipe or WorldRecipe()
    torch.set_num_threads(recipe.threads)
    out.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(out)
    report = WorldReport(asdict(recipe), dict(previous.get("seconds", {})), dict(previous.get("files", {})))
    meta = {"toy_world": "for demos and tests, not for art"}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        result = fn()
        report.seconds[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {report.seconds[name]} s")
        return result

    def save(fname: str, module: torch.nn.Module) -> None:
        path = save_weights(module, out / fname, {**meta, "file": fname})
        report.files[fname] = {"parameters": _params(module), "bytes": path.stat().st_size}

    scenes, images = timed("data", lambda: data.make_dataset(recipe.data_seed, recipe.n_images))
    if "vae" in stages:
        vae = timed("vae", lambda: train_vae(images, recipe, log=log))
        save(VAE_FILE, vae)
    if {"reward", "toy", "toy-more", "toy-2", "vae", "vae-decoder"} & set(stages):
        vae = _load_file(build_vae(), out, VAE_FILE)
        if "vae" in stages or "vae_scaling_factor" not in report.files:
            report.files["vae_scaling_factor"] = scaling_factor(vae, images)
        vae.register_to_config(scaling_factor=report.files["vae_scaling_factor"])
    if "vae-decoder" in stages and recipe.decoder_steps > 0:
        vae = timed("vae-decoder", lambda: train_vae_decoder(vae, images, recipe, log=log))
        save(VAE_FILE, vae)  # same encoder: the scaling factor and every latent stay
        vae = _load_file(vae, out, VAE_FILE)
    if "reward" in stages:
        reward = timed("reward", lambda: train_reward(vae, recipe, log=log))
        save(REWARD_FILE, reward)
    if {"toy", "toy-more"} & set(stages):
        latents = timed("encode", lambda: encode_all(vae, images))
    if "toy" in stages:
        unet, te = timed("toy", lambda: train_unet("toy", latents, vae.config.scaling_factor, scenes, recipe,
                                                   log=log))
        save(TEXT_ENCODER_FILE, te)
        save(TOY_GENERATORS["toy"].unet_file, unet)
    if "toy-more" in stages and recipe.unet_more_steps > 0:
        te0 = _load_file(build_text_encoder(), out, TEXT_ENCODER_FILE)
        unet0 = _load_file(build_unet(TOY_GENERATORS["toy"].block_out_channels), out, TOY_GENERATORS["toy"].unet_file)

        def snap(step: int, unet_s, te_s) -> None:
            folder = out / "snapshots" / str(step)
            save_weights(unet_s, folder / TOY_GENERATORS["toy"].unet_file, meta)
            save_weights(te_s, folder / TEXT_ENCODER_FILE, meta)

        unet, te = timed("toy-more", lambda: train_unet(
            "toy", latents, vae.config.scaling_factor, scenes, recipe, steps=recipe.unet_more_steps, init_unet=unet0,
            init_text_encoder=te0, lr=recipe.unet_more_lr, seed_offset=1000, log=log, snapshot=snap,
            snapshot_every=snapshot_every))
        save(TEXT_ENCODER_FILE, te)
        save(TOY_GENERATORS["toy"].unet_file, unet)
    if "toy-2" in stages:
        spec = TOY_GENERATORS["toy-2"]
        te = _load_file(build_text_encoder(), out, TEXT_ENCODER_FILE)
        base = _load_file(build_unet(TOY_GENERATORS[spec.init_from].block_out_channels), out,
                          TOY_GENERATORS[spec.init_from].unet_file)
        scenes2, images2 = data.make_dataset(spec.data_seed, recipe.unet2_images, spec.defect_prob)
        latents2 = encode_all(vae, images2)
        unet2, _ = timed("toy-2", lambda: train_unet("toy-2", latents2, vae.config.scaling_factor, scenes2, recipe,
                                                     text_encoder=te, init_unet=base, log=log))
        save(TOY_GENERATORS["toy-2"].unet_file, unet2)
    latest = read_manifest(out)  # merge with stages another process finished meanwhile
    report.files = {**latest.get("files", {}), **report.files}
    report.seconds = {**latest.get("seconds", {}), **report.seconds}
    report.files["total_bytes"] = sum(f["bytes"] for f in report.files.values() if isinstance(f, dict))
    (out / MANIFEST).write_text(json.dumps(asdict(report), indent=2), "utf-8")
    log(f"wrote {out}: {json.dumps(report.files)}")
    return report


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help=f"output folder (default {WEIGHTS_DIR})")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; part of the recipe)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all, in that order)")
    p.add_argument("--decoder-steps", type=int, default=None, help="steps of stage vae-decoder (default: the recipe's)")
    p.add_argument("--decoder-fg-weight", type=float, default=None, help="foreground weight of stage vae-decoder")
    p.add_argument("--more-steps", type=int, default=None, help="steps of stage toy-more (default: the recipe's)")
    p.add_argument("--snapshot-every", type=int, default=0, help="write toy-more's EMA weights every N steps")
    args = p.parse_args(argv)
    stages = tuple(x.strip() for x in args.stages.split(",") if x.strip())
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    recipe = WorldRecipe(threads=args.threads)
    if args.decoder_steps is not None:
        recipe.decoder_steps = args.decoder_steps
    if args.decoder_fg_weight is not None:
        recipe.decoder_fg_weight = args.decoder_fg_weight
    if args.more_steps is not None:
        recipe.unet_more_steps = args.more_steps
    build_world(args.out, recipe, stages, snapshot_every=args.snapshot_every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
