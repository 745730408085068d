"""Stage 1: GMML self-supervised pretraining on single slices (paper section 3.2, 4.1).

One step: uint8 slices -> [0, 1] -> augment -> normalise -> group-mask -> ViT ->
averaged skip blocks -> light decoder -> L1 on masked pixels -> AdamW. Everything after
the cache read is batched on the training device.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from sbssl.augment import SliceAugment
from sbssl.config import to_yaml
from sbssl.data.cache import slice_cache_for
from sbssl.data.datasets import SliceDataset
from sbssl.engine import checkpoint as ckpt
from sbssl.engine.runtime import finite_on_all_ranks, run_in_folder, seed_everything
from sbssl.engine.schedules import apply_schedule, cosine, param_groups
from sbssl.errors import SbsslError
from sbssl.masking import GroupMasking
from sbssl.models.build import build_gmml
from sbssl.models.gmml import GMMLAutoencoder, masked_l1
from sbssl.models.vit import encoder_meta
from sbssl.utils.draw import Draw
from sbssl.utils.io import atomic_write, atomic_write_text, trim_jsonl
from sbssl.utils.progress import progress
from sbssl.utils.rundir import CHECKPOINTS, CONFIG, ENCODER, LOG

log = logging.getLogger("sbssl")
FINISHED = ENCODER


class GMMLStep:
    """Augment + corrupt + reconstruct + loss for one batch of uint8 slices (composable, testable)."""

    def __init__(self, cfg: DictConfig, mean: float, std: float):
        self.augment = SliceAugment.from_config(cfg.augment, cfg.data.plane)
        self.masking = GroupMasking.from_config(cfg.mask, ones_value=(1.0 - mean) / std)
        self.mean, self.std, self.in_chans = mean, std, cfg.model.in_chans

    def inputs(self, x_u8: torch.Tensor, draw: Draw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (clean target, corrupted input, mask), all normalised."""
        x = self.augment(x_u8.float() / 255.0, draw=draw)
        x = (x - self.mean) / self.std
        if self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1)
        corrupted, mask = self.masking(x, draw)
        return x, corrupted, mask


def pretrain(cfg: DictConfig, root: Path, out: Path, overwrite: bool = False, resume: bool = False) -> Path:
    return run_in_folder(cfg.trainer, out, overwrite, resume, FINISHED,
                         lambda fabric, folder: _pretrain(cfg, fabric, Path(root), folder))


@dataclass
class _Run:
    """Everything one pretraining run's epochs share."""

    cfg: DictConfig
    fabric: object
    out: Path
    model: GMMLAutoencoder
    model_f: torch.nn.Module
    opt_f: torch.optim.Optimizer
    dataset: SliceDataset
    step_fn: GMMLStep
    lr: float
    total: int
    warmup: int
    step: int = 0

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.fabric.world_size


def _pretrain(cfg: DictConfig, fabric, root: Path, out: Path) -> Path:
    rank0 = fabric.global_rank == 0
    seed_everything(cfg.train.seed + fabric.global_rank, cfg.train.deterministic)
    cache, _ = slice_cache_for(cfg, root, "train", fabric, labelled=False)  # labels unused
    if cfg.data.mean <= 0:
        cfg.data.mean, cfg.data.std = float(cache.mean), float(cache.std)
    cfg.data.root = str(root)
    dataset = SliceDataset(cache)
    global_batch = cfg.train.batch_size * fabric.world_size
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise SbsslError(f"{root}: {len(dataset)} slices are fewer than one global batch ({global_batch})")
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_gmml(cfg)
    torch.manual_seed(cfg.train.seed + fabric.global_rank)
    lr = cfg.train.lr * global_batch / 256
    model_f, opt_f = fabric.setup(model, torch.optim.AdamW(param_groups(model), lr=lr))
    if cfg.train.compile:
        model_f = torch.compile(model_f)
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps > 0:
        total = min(total, cfg.train.max_steps)
    run = _Run(cfg, fabric, out, model, model_f, opt_f, dataset, GMMLStep(cfg, cfg.data.mean, cfg.data.std), lr,
               total, warmup=min(int(cfg.train.warmup_epochs * steps_per_epoch), total // 2))
    start_epoch = _restore(run)
    if start_epoch == 0 and rank0:
        atomic_write_text(out / CONFIG, to_yaml(cfg))
    # the middle slice of six exams spread over the set: the same images in every grid
    exams = np.linspace(0, cache.n_exams - 1, 6).round().astype(int)
    fixed = torch.from_numpy(cache.data[(cache.offsets[exams] + cache.offsets[exams + 1]) // 2])[:, None]
    for epoch in range(start_epoch, cfg.train.epochs):
        if run.step >= total:
            break
        rec = _pretrain_epoch(run, epoch)
        if rank0:
            with open(out / LOG, "a") as f:
                f.write(json.dumps(rec) + "\n")
            last = epoch == cfg.train.epochs - 1 or run.step >= total
            if cfg.train.recon_every > 0 and ((epoch + 1) % cfg.train.recon_every == 0 or last):
                save_recon_grid(model, run.step_fn, fixed.to(fabric.device),
                                out / "recon" / f"epoch_{epoch + 1:04d}.png", cfg.train.seed)
            ckpt.save_checkpoint(out / CHECKPOINTS, {
                "model": model.state_dict(), "optimizer": opt_f.state_dict(), "epoch": epoch, "step": run.step,
                "rng": ckpt.rng_state(), "loss": rec["loss"]})
        fabric.barrier()
    if rank0:
        save_encoder(model, cfg, out / FINISHED)
        log.info("pretraining done: %s", out / FINISHED)
    fabric.barrier()
    return out / FINISHED


def _restore(run: _Run) -> int:
    """Load the run folder's checkpoint, if any; returns the epoch to start from."""
    state = ckpt.load_checkpoint(run.out / CHECKPOINTS)
    done = -1 if state is None else state["epoch"]
    if run.fabric.global_rank == 0:
        trim_jsonl(run.out / LOG, lambda rec: rec.get("epoch", done + 1) <= done)
    if state is None:
        return 0
    run.model.load_state_dict(state["model"])
    run.opt_f.load_state_dict(state["optimizer"])
    ckpt.set_rng_state(state["rng"])
    run.step = state["step"]
    if run.fabric.global_rank == 0:
        log.info("resuming %s at epoch %d (step %d)", run.out, state["epoch"] + 1, run.step)
    return state["epoch"] + 1


def _pretrain_epoch(run: _Run, epoch: int) -> dict:
    """One pass over the slices (this rank's share of each global batch); returns the log record."""
    cfg, fabric = run.cfg, run.fabric
    rank, world, bs = fabric.global_rank, fabric.world_size, cfg.train.batch_size
    steps = len(run.dataset) // run.global_batch
    order = torch.randperm(len(run.dataset), generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch))
    run.model_f.train()
    t0, seen, loss_sum, n_loss, status = time.perf_counter(), 0, torch.zeros((), device=fabric.device), 0, ""
    title = f"pretrain {epoch + 1}/{cfg.train.epochs}"
    batches = [order[b * run.global_batch: (b + 1) * run.global_batch][rank * bs: (rank + 1) * bs].tolist()
               for b in range(steps)]
    with progress(title, steps, "steps", enabled=None if rank == 0 else False) as bar:
        for b, x_u8 in enumerate(_loader(run.dataset, batches, cfg.data.workers, fabric.device)):
            if run.step >= run.total:
                break
            x_u8 = x_u8.to(fabric.device, non_blocking=True)
            lr = cosine(run.step, run.total, run.lr, cfg.train.min_lr, run.warmup)
            wd = cosine(run.step, run.total, cfg.train.weight_decay, cfg.train.weight_decay_end)
            apply_schedule(run.opt_f, lr, wd)
            gen = torch.Generator(fabric.device).manual_seed(cfg.train.seed * 1_000_003 + run.step)
            target, corrupted, mask = run.step_fn.inputs(x_u8, Draw(fabric.device, gen, rank, world))
            loss = _global_masked_l1(fabric, run.model_f(corrupted).float(), target, mask)
            if not finite_on_all_ranks(fabric, loss):
                _nonfinite(run, epoch)
                continue
            fabric.backward(loss)
            if cfg.train.clip_grad > 0:
                fabric.clip_gradients(run.model_f, run.opt_f, max_norm=cfg.train.clip_grad, error_if_nonfinite=False)
            run.opt_f.step()
            run.opt_f.zero_grad(set_to_none=True)
            run.step += 1
            seen += x_u8.shape[0] * world
            loss_sum += loss.detach()
            n_loss += 1
            if b % 5 == 0:
                status = f"loss {loss.item():.4f} {seen / max(time.perf_counter() - t0, 1e-9):.0f} img/s"
            bar.advance(1, status=status)
    elapsed = time.perf_counter() - t0
    epoch_loss = float(fabric.all_reduce(loss_sum / max(n_loss, 1), reduce_op="mean"))
    return {"epoch": epoch, "step": run.step, "loss": epoch_loss, "lr": lr, "wd": wd,
            "img_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed}


def _loader(dataset: SliceDataset, batches: list[list[int]], workers: int, device) -> DataLoader:
    """Batches read whole from the memory-mapped cache; with workers, prefetched (pinned on GPU)."""
    pin = torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin,
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def _nonfinite(run: _Run, epoch: int) -> None:
    """A NaN/inf loss: skip the step (train.nonfinite=skip) or stop before any weight changes."""
    if run.cfg.train.nonfinite == "skip":
        log.warning("non-finite loss at epoch %d step %d: step skipped", epoch, run.step)
        run.opt_f.zero_grad(set_to_none=True)
        run.step += 1
        return
    raise SbsslError(f"non-finite loss at epoch {epoch} step {run.step}; weights not updated; last good "
                     f"checkpoint: {run.out / 'checkpoints' / 'last.pt'}")


def _global_masked_l1(fabric, recon, target, mask) -> torch.Tensor:
    """Masked L1 normalised by the mask size of the global batch: DDP then equals one process."""
    count = mask.to(recon.dtype).expand_as(recon).sum()
    if fabric.world_size > 1:
        torch.distributed.all_reduce(count)
        count = count / fabric.world_size
    return masked_l1(recon, target, mask, count)


def save_encoder(model: GMMLAutoencoder, cfg: DictConfig, path: Path) -> None:
    """The encoder alone, as timm names its weights, plus what rebuilds it and its input scaling."""
    meta = encoder_meta(model.encoder, cfg.model.name)
    meta.update({"mean": str(cfg.data.mean), "std": str(cfg.data.std), "crop": str(cfg.data.crop),
                 "slab": str(cfg.data.slab), "format": "sbssl-gmml-encoder"})
    sd = {k: v.detach().contiguous().cpu() for k, v in model.encoder.state_dict().items()}
    atomic_write(path, lambda p: save_file(sd, str(p), metadata=meta))


@torch.no_grad()
def save_recon_grid(model: GMMLAutoencoder, step_fn: GMMLStep, x_u8: torch.Tensor, path: Path, seed: int) -> None:
    """Rows: original, corrupted, reconstruction, mask (as the paper's Fig. 4)."""
    from sbssl.utils.plotting import pyplot, save_png

    plt = pyplot()

    was_training = model.training
    model.eval()
    gen = torch.Generator(x_u8.device).manual_seed(seed + 12345)
    draw = Draw(x_u8.device, gen)
    x = (x_u8.float() / 255.0 - step_fn.mean) / step_fn.std
    if step_fn.in_chans != 1:
        x = x.expand(-1, step_fn.in_chans, -1, -1)
    corrupted, mask = step_fn.masking(x, draw)
    recon = model(corrupted).float()
    model.train(was_training)
    shown = torch.where(mask, recon, x)
    rows = [("original", x), ("corrupted", corrupted), ("reconstruction", recon), ("restored", shown),
            ("mask", mask.float())]
    n = x.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.6 * len(rows)), squeeze=False)
    lo, hi = float(x.min()), float(x.max())
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            img = imgs[c, 0].cpu().numpy()
            ax.imshow(img, cmap="gray", vmin=0 if name == "mask" else lo, vmax=1 if name == "mask" else hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path, dpi=70)

