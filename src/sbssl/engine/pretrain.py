"""Stage 1: GMML self-supervised pretraining on single slices (paper section 3.2, 4.1).

One step: uint8 slices -> [0, 1] -> augment -> normalise -> group-mask -> ViT ->
averaged skip blocks -> light decoder -> L1 on masked pixels -> AdamW. With a CNN (`model.name=mrnet_cnn`), the
encoder and decoder of models/gmml_cnn.py take the ViT's place; with `pretext=jigsaw`, reference [20]'s puzzle
(jigsaw.py, models/jigsaw.py) takes GMML's. The run folder, logs, checkpoints and encoder file are the same.
Everything after the cache read is batched on the training device.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from sbssl.config import to_yaml
from sbssl.data.cache import pooled_statistics, slice_cache_for
from sbssl.data.datasets import SliceDataset, loader
from sbssl.data.layout import ALL_PLANES, PLANES, is_mrnet, list_exams, resolve_root
from sbssl.data.volume_io import load_npy
from sbssl.engine import checkpoint as ckpt
from sbssl.engine.loop import Trainer, train_one_epoch
from sbssl.engine.run_log import RunLog
from sbssl.engine.runtime import cpu_has_bf16, run_in_folder, seed_everything
from sbssl.engine.schedules import hold, param_groups
from sbssl.engine.tasks import GMMLTask, JigsawTask
from sbssl.errors import SbsslError
from sbssl.models.build import build_pretext
from sbssl.models.encoder_file import encoder_init, init_preprocessing, save_encoder
from sbssl.models.gmml import GMMLAutoencoder
from sbssl.models.gmml_cnn import GMMLConvAutoencoder
from sbssl.utils.draw import Draw
from sbssl.utils.io import atomic_write_json, atomic_write_text, trim_jsonl
from sbssl.utils.rundir import CHECKPOINTS, CONFIG, ENCODER, LOG, RUN

log = logging.getLogger("sbssl")
FINISHED = ENCODER
# GMML ViT-T at 32 px on a 2-core EPYC: with AVX512-BF16 (reproduce.RATES["cpu"]["pretrain"]), and without
CPU_SLICES_PER_S = {"bf16": 55.0, "fp32": 20.0}


def pretrain(cfg: DictConfig, root: Path, out: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """GMML-pretrain an encoder into `out`. With `resume` and a larger `train.epochs`, a finished run is extended
    from its last checkpoint (decoder and optimizer state kept; the cosine is re-derived for the new length)."""
    return run_in_folder(cfg.trainer, out, overwrite, resume, FINISHED,
                         lambda fabric, folder: _pretrain(cfg, fabric, Path(root), folder), extendable=True)


@dataclass
class _Run:
    """Everything one pretraining run's epochs share."""

    cfg: DictConfig
    out: Path
    model: GMMLAutoencoder | GMMLConvAutoencoder
    trainer: Trainer
    dataset: SliceDataset
    task: GMMLTask | JigsawTask

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.trainer.fabric.world_size


def pretraining_estimate(cfg: DictConfig, root: Path) -> str:
    """What a pretraining run on `root` costs, said before it starts: its train slices, epochs, and minutes at
    the GMML ViT-T rate of a 2-core CPU at 32 px, with or without fast bf16. Volumes other
    than .npy are not opened for this: they count as 30 slices."""
    records = list_exams(root, "train", cfg.data.plane if cfg.data.plane != ALL_PLANES else "sagittal",
                         cfg.data.task, labelled=False)
    depth = [load_npy(r.path, mmap=True).shape[0] if r.path.suffix.lower() == ".npy" else 30 for r in records]
    slices = int(sum(depth) * float(cfg.data.slab))
    kind = "bf16" if cpu_has_bf16() else "fp32"
    minutes = slices * int(cfg.train.epochs) / CPU_SLICES_PER_S[kind] / 60
    return (f"{slices} slices x {cfg.train.epochs} epochs, about {minutes:.0f} min on a 2-core CPU "
            f"({kind}: {CPU_SLICES_PER_S[kind]:.0f} slices/s; a GPU is 50-100x faster)")


def pretext_name(cfg: DictConfig) -> str:
    """The pretext an encoder file records: gmml, jigsaw, or jigsaw+noise ("[20] + noise")."""
    if cfg.pretext != "jigsaw":
        return str(cfg.pretext)
    return "jigsaw+noise" if float(cfg.jigsaw.noise) > 0 else "jigsaw"


def plane_caches(cfg: DictConfig, root: Path, fabric) -> list:
    """The train slices GMML learns from: one plane's (data.plane), or with data.plane=all every plane's of an
    MRNet folder, so one encoder serves the three planes' classifiers. Labels are unused."""
    planes = PLANES if cfg.data.plane == ALL_PLANES else (cfg.data.plane,)
    if len(planes) > 1 and not is_mrnet(resolve_root(root)):
        raise SbsslError(f"{root}: data.plane=all needs an MRNet folder (one series per plane); this one has one")
    out = []
    for plane in planes:
        c = copy.deepcopy(cfg)
        c.data.plane = plane
        out.append(slice_cache_for(c, root, "train", fabric, labelled=False)[0])
    return out


def _pretrain(cfg: DictConfig, fabric, root: Path, out: Path) -> Path:
    rank0 = fabric.global_rank == 0
    seed_everything(cfg.train.seed + fabric.global_rank, cfg.train.deterministic)
    init = encoder_init(str(cfg.init))  # continued pretraining: the encoder's architecture, record and weights
    if init is not None:
        cfg = init.configure(cfg)
    caches = plane_caches(cfg, root, fabric)
    cache = caches[0]
    pre = init_preprocessing(init, cfg, *pooled_statistics(caches))
    dataset = SliceDataset(caches)
    global_batch = cfg.train.batch_size * fabric.world_size
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise SbsslError(f"{root}: {len(dataset)} slices are fewer than one global batch ({global_batch})")
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_pretext(cfg)
    if init is not None:  # the decoder (or puzzle head) starts fresh
        init.load_into(model.encoder)
    align = getattr(model, "required_align", 1)
    if cfg.mask.align % align:
        raise SbsslError(f"mask.align={cfg.mask.align}: GMML with model.conv_masking=sparse needs mask groups aligned "
                         f"with the encoder's stride, a multiple of {align} (or model.conv_masking=dense)")
    torch.manual_seed(cfg.train.seed + fabric.global_rank)
    lr = cfg.train.lr * global_batch / 256
    # train.hold_epochs (continued pretraining): the encoder waits while a fresh decoder learns to read it, as
    # LP-FT fits a head first; otherwise the random decoder's first gradients rewrite the pretrained features
    groups = hold(param_groups(model), model.encoder, int(cfg.train.hold_epochs * steps_per_epoch))
    model_f, opt_f = fabric.setup(model, torch.optim.AdamW(groups, lr=lr))
    if cfg.train.compile:
        model_f = torch.compile(model_f)
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps > 0:
        total = min(total, cfg.train.max_steps)
    warmup = min(int(cfg.train.warmup_epochs * steps_per_epoch), total // 2)
    trainer = Trainer(fabric, model_f, opt_f, cfg.train, lr, total, warmup, cfg.train.seed,
                      out / CHECKPOINTS / "last.pt")
    run = _Run(cfg, out, model, trainer, dataset, (JigsawTask if cfg.pretext == "jigsaw" else GMMLTask)(cfg, pre))
    start_epoch = _restore(run)
    runlog = RunLog(out, "pretrain", cfg.trainer.loggers, rank0, trainer.step if start_epoch else None)
    if start_epoch == 0 and rank0:
        atomic_write_text(out / CONFIG, to_yaml(cfg))
        atomic_write_json(out / RUN, {"root": str(Path(root).resolve()), "preprocessing": pre.to_dict(),
                                      "init": f"{init.tag}:{init.path}" if init is not None else "scratch"})
    if (out / FINISHED).exists():
        _extend(run, start_epoch)
    # the middle slice of six exams spread over the set: the same images in every grid
    exams = np.linspace(0, cache.n_exams - 1, 6).round().astype(int)
    fixed = torch.from_numpy(cache.data[(cache.offsets[exams] + cache.offsets[exams + 1]) // 2])[:, None]
    for epoch in range(start_epoch, cfg.train.epochs):
        if trainer.finished:
            break
        rec = _pretrain_epoch(run, epoch)
        runlog.steps(trainer.pop_history())
        runlog.epoch(rec)
        if rank0:
            last = epoch == cfg.train.epochs - 1 or trainer.finished
            recon = cfg.train.recon_every > 0 and cfg.pretext == "gmml"  # a jigsaw restores nothing to show
            if recon and ((epoch + 1) % cfg.train.recon_every == 0 or last):
                save_recon_grid(model, run.task, fixed.to(fabric.device),
                                out / "recon" / f"epoch_{epoch + 1:04d}.png", cfg.train.seed)
            ckpt.save_checkpoint(out / CHECKPOINTS, {
                "model": model.state_dict(), "optimizer": opt_f.state_dict(), "epoch": epoch, "step": trainer.step,
                "rng": ckpt.rng_state(), "loss": rec["loss"]})
        fabric.barrier()
    runlog.close()
    if rank0:
        save_encoder(model.encoder, cfg.model.name, pre, out / FINISHED, pretext_name(cfg))
        log.info("pretraining done: %s", out / FINISHED)
    fabric.barrier()
    return out / FINISHED


def _restore(run: _Run) -> int:
    """Load the run folder's checkpoint, if any; returns the epoch to start from."""
    state = ckpt.load_checkpoint(run.out / CHECKPOINTS)
    done = -1 if state is None else state["epoch"]
    if run.trainer.fabric.global_rank == 0:
        trim_jsonl(run.out / LOG, lambda rec: rec.get("epoch", done + 1) <= done)
    if state is None:
        return 0
    start = ckpt.restore_into(state, run.model, run.trainer)
    if run.trainer.fabric.global_rank == 0:
        log.info("resuming %s at epoch %d (step %d)", run.out, start, run.trainer.step)
    return start


def _extend(run: _Run, start_epoch: int) -> None:
    """A finished run resumed with a longer schedule: record the new length; the old encoder stays until the new
    one replaces it."""
    cfg, out = run.cfg, run.out
    if start_epoch >= cfg.train.epochs or run.trainer.finished:
        raise SbsslError(f"{out}: already pretrained for {start_epoch} epochs; to extend it, resume with a larger "
                         f"train.epochs")
    if run.trainer.fabric.global_rank != 0:
        return
    log.info("extending %s from %d to %d epochs", out, start_epoch, cfg.train.epochs)
    record = json.loads((out / RUN).read_text())
    phases = record.setdefault("extended", [])
    if {"from_epoch": start_epoch, "epochs": cfg.train.epochs} not in phases:
        phases.append({"from_epoch": start_epoch, "epochs": cfg.train.epochs})
    atomic_write_json(out / RUN, record)
    atomic_write_text(out / CONFIG, to_yaml(cfg))


def _pretrain_epoch(run: _Run, epoch: int) -> dict:
    """One pass over the slices (this rank's share of each global batch); returns the log record."""
    cfg, fabric = run.cfg, run.trainer.fabric
    rank, bs = fabric.global_rank, cfg.train.batch_size
    steps = len(run.dataset) // run.global_batch
    order = torch.randperm(len(run.dataset), generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch))
    batches = [order[b * run.global_batch: (b + 1) * run.global_batch][rank * bs: (rank + 1) * bs].tolist()
               for b in range(steps)]

    def loss_of(x_u8: torch.Tensor, draw) -> torch.Tensor:
        return run.task(run.trainer.model_f, x_u8.to(fabric.device, non_blocking=True), draw,
                        global_count=lambda c: _global_count(fabric, c)).loss

    return train_one_epoch(run.trainer, loader(run.dataset, batches, cfg.data.workers, fabric.device), loss_of,
                           lambda x: x.shape[0], epoch, f"pretrain {epoch + 1}/{cfg.train.epochs}", steps, "img")


def _global_count(fabric, count: torch.Tensor) -> torch.Tensor:
    """This rank's count of corrupted pixels -> the global batch's mean count: DDP then equals one process."""
    return fabric.all_reduce(count, reduce_op="mean")


@torch.no_grad()
def save_recon_grid(model: GMMLAutoencoder | GMMLConvAutoencoder, task: GMMLTask, x_u8: torch.Tensor, path: Path,
                    seed: int) -> None:
    """Rows: original, corrupted, reconstruction, mask (as the paper's Fig. 4)."""
    from sbssl.utils.plotting import pyplot, save_png

    plt = pyplot()
    was_training = model.training
    model.eval()
    gen = torch.Generator(x_u8.device).manual_seed(seed + 12345)
    o = task(model, x_u8, Draw(x_u8.device, gen), augment=False)
    model.train(was_training)
    x, corrupted, recon, mask = o.target, o.corrupted, o.recon, o.mask
    lo, hi = float(x.min()), float(x.max())

    def window(t: torch.Tensor) -> torch.Tensor:  # the original's grey window, as [0, 1]
        return ((t - lo) / max(hi - lo, 1e-6)).clamp(0, 1)

    rows = [("original", window(x)), ("corrupted", window(corrupted)), ("reconstruction", window(recon)),
            ("restored", window(torch.where(mask, recon, x))), ("mask", mask.float().expand_as(x))]
    # one mosaic in one axes (a grid of subplots costs ~1 s a figure in matplotlib's layout)
    tiles = [F.pad(imgs[:, 0].float().cpu(), (1, 1, 1, 1), value=1.0) for _, imgs in rows]  # white 2-px seams
    n, h, w = tiles[0].shape
    mosaic = torch.cat([t.permute(1, 0, 2).reshape(h, n * w) for t in tiles])
    fig, ax = plt.subplots(figsize=(1.6 * n, 1.6 * len(rows)))
    ax.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([h * (r + 0.5) for r in range(len(rows))], [name for name, _ in rows], fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path, dpi=70)

