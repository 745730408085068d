"""Stage 2: slice-based fine-tuning of an ensemble (paper section 4.1).

Per member (its own seed): minority oversampling to the majority's count each epoch,
the pretraining augmentations drawn once per exam (shared by its slices), cross-entropy,
AdamW with warmup + cosine. The epoch kept is the one with the best AUC on a held-out,
stratified part of the *train* split, when that part can rank exams (`finetune.select`); with
fewer labels every labelled exam fits and the last epoch is kept. The reported split is never
looked at here: `sbssl.workflow.finetune` scores it once the ensemble is final.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

from sbssl.config import to_yaml
from sbssl.data.cache import slice_cache_for
from sbssl.data.datasets import ExamDataset, gather_index, loader
from sbssl.data.layout import synth_family
from sbssl.data.preprocessing import Preprocessing
from sbssl.engine import checkpoint as ckpt
from sbssl.engine.inference import config_json, predict_probs, rows_read, slice_feature_table
from sbssl.engine.loop import Trainer, train_one_epoch
from sbssl.engine.probe import fit_readout
from sbssl.engine.run_log import RunLog
from sbssl.engine.runtime import seed_everything
from sbssl.engine.sampling import (
    holdout_can_rank,
    labelled_subset,
    oversampled_order,
    stratified_folds,
    stratified_holdout,
)
from sbssl.engine.schedules import param_groups
from sbssl.engine.tasks import ExamTask
from sbssl.errors import SbsslError
from sbssl.models.build import build_classifier
from sbssl.models.encoder_file import PretrainedEncoder, encoder_init, init_preprocessing
from sbssl.models.imported import ImportedWeights
from sbssl.utils.io import atomic_write, atomic_write_json, atomic_write_text
from sbssl.utils.rundir import CHECKPOINTS, CONFIG, RUN, SPLIT, model_file

log = logging.getLogger("sbssl")


def train_ensemble(cfg: DictConfig, fabric, root: Path, out: Path) -> Path:
    """Train every member not yet in `out` (config.yaml, run.json, split.json, model-<seed>.safetensors), inside a
    launched run folder (`engine.runtime.run_in_folder`; `sbssl.workflow.finetune` checks the plane first)."""
    rank0 = fabric.global_rank == 0
    asked, init = cfg, encoder_init(str(cfg.init))
    if init is not None:  # the encoder's architecture and input geometry; its preprocessing record below
        cfg = init.configure(asked)
        if rank0 and str(cfg.init).startswith("builtin:") and synth_family(root) != "demo":
            log.warning("%s: the shipped encoder was pretrained on the demo's synthetic knees; on knees of "
                        "another kind compare it with init=auto, which pretrains on this folder's own slices "
                        "first, as the paper does (README: Your own knees)", root)
    cache, records = slice_cache_for(cfg, root, "train", fabric)
    pre = init_preprocessing(init, cfg, cache.mean, cache.std)
    labels = np.array([r.label for r in records])
    if len(np.unique(labels)) < 2:
        raise SbsslError(f"{root}: the train split has only one class for task '{cfg.data.task}'")
    used = labelled_subset(labels, cfg.finetune.labels, cfg.train.seed)
    splits = member_splits(cfg, labels, used)
    common_fit, common_held = splits[0] if cfg.finetune.holdout == "shared" else (used, used[:0])
    if rank0:
        atomic_write_text(out / CONFIG, to_yaml(asked))  # as the user asked; what the encoder set is in run.json
        atomic_write_json(out / RUN, {"root": str(Path(root).resolve()), "preprocessing": pre.to_dict(),
                                      "init": f"{init.tag}:{init.path}" if init is not None else "scratch",
                                      "architecture": init.architecture(str(cfg.data.roi)) if init is not None else {}})
        split = {"fit": [records[i].case for i in common_fit], "held_out": [records[i].case for i in common_held]}
        if cfg.finetune.holdout == "member":  # what each member held out; no exam is held out from all of them
            split["members"] = {str(cfg.train.seed + m): [records[i].case for i in h] for m, (_, h) in
                                enumerate(splits)}
        atomic_write_text(out / SPLIT, json.dumps(split) + "\n")
    for m, (fit, held) in enumerate(splits):
        seed = cfg.train.seed + m
        path = out / model_file(seed)
        if path.exists():
            continue
        state, info = train_member(cfg, pre, fabric, Labelled(cache, labels, fit, held), seed, init, out)
        if rank0:
            meta = {"config": config_json(cfg), "preprocessing": json.dumps(pre.to_dict()), "seed": str(seed),
                    **{k: str(v) for k, v in info.items()}}
            atomic_write(path, lambda p, s=state, md=meta: save_file(s, str(p), metadata=md))
        fabric.barrier()
    return out


def member_splits(cfg: DictConfig, labels: np.ndarray, used: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each member's (fit, held-out) exam indices: one stratified held-out part for all (`finetune.holdout=shared`)
    or, with `member`, member m's held-out part is fold m mod k of a stratified k-fold of the labelled exams."""
    f, n = cfg.finetune, cfg.finetune.ensemble
    if not choose_on_heldout(cfg, labels[used]):  # nothing to choose, or too few to choose by: all exams fit
        return [(used, used[:0])] * n
    if f.holdout == "shared":
        fit, held = (used[i] for i in stratified_holdout(labels[used], f.val_fraction, cfg.train.seed))
        return [(fit, held)] * n
    k = max(2, round(1 / f.val_fraction))  # choose_on_heldout: every fold holds min_heldout of each class
    fold = stratified_folds(labels[used], k, cfg.train.seed)
    return [(used[fold != m % k], used[fold == m % k]) for m in range(n)]


def choose_on_heldout(cfg: DictConfig, y: np.ndarray) -> bool:
    """`finetune.select`: auc always holds a part out, last never, auto when that part can rank its exams. A read-out
    alone (train.epochs=0) is one candidate, not chosen among anything."""
    f = cfg.finetune
    if cfg.train.epochs == 0 or f.select == "last":
        return False
    return f.select == "auc" or holdout_can_rank(y, f.val_fraction, f.min_heldout)


@dataclass(frozen=True)
class Labelled:
    """The train split as a member sees it: the slice cache, every exam's label, the exams it fits and the
    held-out exams that choose its epoch (empty: the last epoch is kept)."""

    cache: object
    labels: np.ndarray
    fit: np.ndarray
    held: np.ndarray

    @property
    def read(self) -> np.ndarray:
        """Every exam the member reads: its slices feed batch-norm statistics and feature tables."""
        return np.concatenate([self.fit, self.held])


@dataclass
class _Member:
    """Everything one ensemble member's epochs share (as pretraining's `_Run`), with the held-out selection."""

    cfg: DictConfig
    pre: Preprocessing
    data: Labelled
    seed: int
    model: torch.nn.Module
    trainer: Trainer
    runlog: RunLog
    table: torch.Tensor | None  # linear probing: the frozen encoder's features, looked up by cache row
    steps_per_epoch: int
    best: dict

    @property
    def fabric(self):
        return self.trainer.fabric

    def restore(self, st: dict | None) -> int:
        """The member's checkpoint, if any, into the model, optimiser, RNG and selection; the epoch to start at."""
        if st is None:
            return 0
        self.best = {"auc": st["best_auc"], "epoch": st["best_epoch"], "state": st["best_state"]}
        return ckpt.restore_into(st, self.model, self.trainer)

    def epoch(self, epoch: int, exams_ds: ExamDataset, task: ExamTask) -> dict:
        """One pass over the oversampled fit exams (this rank's share of each global batch); the log record."""
        cfg, fabric, dev, d = self.cfg, self.fabric, self.fabric.device, self.data
        be, rank = cfg.finetune.batch_exams, fabric.global_rank
        ge = be * fabric.world_size
        order = oversampled_order(d.labels, d.fit, torch.Generator().manual_seed(self.seed * 1000 + epoch),
                                  cfg.finetune.oversample)
        batches = [order[b * ge: (b + 1) * ge][rank * be: (rank + 1) * be] for b in range(self.steps_per_epoch)]
        model_f = self.trainer.model_f

        def loss_of(batch: dict, draw) -> torch.Tensor:
            y, lengths = batch["labels"].to(dev), batch["lengths"].to(dev)
            if self.table is not None:  # linear probing: the frozen encoder's features, looked up
                return ExamTask.from_features(model_f, self.table[batch["rows"].to(dev)], lengths, y)
            return task(model_f, batch["slices"].to(dev), lengths, y, draw)

        return train_one_epoch(self.trainer, loader(exams_ds, batches, cfg.data.workers, dev), loss_of,
                               lambda b: len(b["exams"]), epoch,
                               f"member {self.seed} epoch {epoch + 1}/{cfg.train.epochs}", self.steps_per_epoch,
                               "exams")

    def select(self, epoch: int) -> float:
        """Score the held-out exams and keep this epoch if it is the best so far (the last, without any)."""
        self.trainer.model_f.eval()
        auc = score_heldout(self.trainer.model_f, self.model, self.data, self.pre, self.cfg.finetune.batch_exams,
                            self.fabric.device, self.table)
        if not np.isfinite(auc) or auc > self.best["auc"]:
            self.best = candidate(self.model, auc, epoch)
        return auc

    def checkpoint(self, ck_dir: Path, epoch: int) -> None:
        """The member's state after `epoch`, selection included, so that a resumed run replays exactly."""
        if self.fabric.global_rank == 0:
            ckpt.save_checkpoint(ck_dir, {
                "model": self.model.state_dict(), "optimizer": self.trainer.opt_f.state_dict(), "epoch": epoch,
                "step": self.trainer.step, "rng": ckpt.rng_state(), "best_auc": self.best["auc"],
                "best_epoch": self.best["epoch"], "best_state": self.best["state"]})
        self.fabric.barrier()

    def weights(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The kept epoch's weights (contiguous, for safetensors) and what chose them."""
        state = self.best["state"] if self.best["state"] is not None else copy.deepcopy(self.model.state_dict())
        return ({k: v.contiguous() for k, v in state.items()},
                {"best_epoch": self.best["epoch"], "heldout_auc": self.best["auc"],
                 "heldout_exams": len(self.data.held)})


def train_member(cfg: DictConfig, pre: Preprocessing, fabric, data: Labelled, seed: int,
                 init: PretrainedEncoder | ImportedWeights | None, out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Train one ensemble member; returns the weights of its best held-out epoch (without a held-out part, its
    last) and what chose them. Resumes from the member's checkpoint in `out`."""
    seed_everything(seed + fabric.global_rank, cfg.train.deterministic)
    torch.manual_seed(seed)
    model = build_classifier(cfg, init)
    ck_dir = out / CHECKPOINTS / f"member-{seed}"
    st = ckpt.load_checkpoint(ck_dir)
    # also on resume: a frozen encoder's feature table is rebuilt before the checkpoint loads
    if init is not None and (cfg.finetune.recalibrate_bn or not init.batch_norm_statistics):
        recalibrate_batch_norm(model, data.cache, data.read, pre, fabric.device)
    model.frozen_bn = cfg.finetune.frozen_bn and init is not None  # from random init there are no statistics yet
    done = -1 if st is None else st["epoch"]
    runlog = RunLog(out, f"member-{seed}", cfg.trainer.loggers, fabric.global_rank == 0,
                    None if st is None else st["step"])
    # a member's log lines after its checkpoint go (all of them, a probe's too, when it restarts)
    runlog.trim(lambda r: r.get("member") != seed or (st is not None and r.get("epoch", 0) <= done))
    probe = cfg.finetune.probe_steps > 0 and st is None
    features = None
    if cfg.finetune.freeze or probe:  # the frozen encoder's features, computed once, looked up by cache row
        with fabric.autocast():
            features = slice_feature_table(model.to(fabric.device), data.cache, data.read, pre, fabric.device)
    if cfg.finetune.freeze:
        model.encoder.requires_grad_(False)
    best = {"auc": -1.0, "epoch": -1, "state": None}
    if probe:  # LP-FT's first stage (engine/probe.py); the fitted read-out is the first candidate kept
        best = probe_readout(cfg, model, features, data, pre, seed, fabric.device, runlog)
    steps = _steps_per_epoch(cfg, data, fabric.world_size)
    member = _Member(cfg, pre, data, seed, model, _trainer(cfg, fabric, model, steps, seed, ck_dir), runlog,
                     features if cfg.finetune.freeze else None, steps, best)
    del features
    start = member.restore(st)
    exams_ds, task = ExamDataset(data.cache, data.labels, model.slices, read=member.table is None), ExamTask(cfg, pre)
    for epoch in range(start, cfg.train.epochs):
        if member.trainer.finished:
            break
        rec = member.epoch(epoch, exams_ds, task)
        auc = member.select(epoch)
        runlog.steps(member.trainer.pop_history())
        runlog.epoch({"member": seed, **rec, "heldout_auc": auc, "best_epoch": member.best["epoch"]})
        member.checkpoint(ck_dir, epoch)
    runlog.close()
    return member.weights()


def _steps_per_epoch(cfg: DictConfig, data: Labelled, world: int) -> int:
    """Optimiser steps per epoch: the fit exams, minority oversampled to the majority's count, per global batch."""
    n_pos = int(data.labels[data.fit].sum())
    balanced = cfg.finetune.oversample and 0 < n_pos < len(data.fit)
    n_per_epoch = 2 * max(n_pos, len(data.fit) - n_pos) if balanced else len(data.fit)  # len(oversampled_order)
    return max(n_per_epoch // (cfg.finetune.batch_exams * world), 1)


def _trainer(cfg: DictConfig, fabric, model, steps: int, seed: int, ck_dir: Path) -> Trainer:
    """AdamW over the model's parameter groups (lr scaled by the global batch), warmup + cosine over `steps` per
    epoch, set up by Fabric."""
    groups = param_groups(model, cfg.finetune.layer_decay, len(getattr(model.encoder, "blocks", [])))
    lr = cfg.train.lr * cfg.finetune.batch_exams * fabric.world_size / 256
    model_f, opt_f = fabric.setup(model, torch.optim.AdamW(groups, lr=lr))
    total = cfg.train.epochs * steps
    if cfg.train.max_steps > 0:
        total = min(total, cfg.train.max_steps)
    warmup = min(int(cfg.train.warmup_epochs * steps), total // 2)
    return Trainer(fabric, model_f, opt_f, cfg.train, lr, total, warmup, seed, ck_dir / "last.pt",
                   label=f"member {seed}, ")


@torch.no_grad()
def recalibrate_batch_norm(model, cache, exams: np.ndarray, pre: Preprocessing, device, batch: int = 256) -> None:
    """Re-estimate the running statistics of the encoder's batch norms (the conv stem's) on the clean slices that
    fine-tuning reads. GMML estimated them on its corrupted inputs (up to 70% noise), so a pretrained encoder in
    eval mode would normalise clean slices with the statistics of noisy ones: the frozen features a probe reads
    and the features of a fine-tuning step (batch statistics) would then differ, and the read-out fitted on the
    one would not fit the other. (torch's `update_bn`, as for SWA; the learned scales stay.)"""
    from torch.optim.swa_utils import update_bn

    rows = rows_read(cache, exams, model.slices)
    stem = getattr(model.encoder, "patch_embed", model.encoder)  # a ViT's batch norms are all in its stem
    stem.to(device)
    update_bn((pre.normalise(torch.from_numpy(cache.data[rows[i: i + batch]])[:, None]) for i in
               range(0, len(rows), batch)), stem, device)


def probe_readout(cfg: DictConfig, model, features, data: Labelled, pre: Preprocessing, seed: int, device,
                  runlog: RunLog) -> dict:
    """Fit the read-out on frozen features (`finetune.probe_steps`), log it as epoch -1, and return it as the
    best state so far: if fine-tuning then only distorts the features, the held-out part keeps the probe."""
    losses = fit_readout(model, features, data.cache, data.labels, data.fit, cfg.finetune.probe_steps,
                         cfg.finetune.probe_lr,
                         cfg.finetune.probe_batch_exams, seed, cfg.finetune.oversample, cfg.finetune.probe_l2,
                         cfg.finetune.probe_solver, cfg.finetune.probe_restarts)
    model.eval()
    auc = score_heldout(model, model, data, pre, cfg.finetune.batch_exams, device, features)
    log.info("member %d: read-out fitted on frozen features (%s, %d %s, loss %.4f -> %.4f), held-out AUC %.3f",
             seed, cfg.finetune.probe_solver, len(losses),
             "evaluations" if cfg.finetune.probe_solver == "lbfgs" else "steps", losses[0], losses[-1], auc)
    runlog.epoch({"member": seed, "epoch": -1, "phase": "probe", "step": 0, "loss": losses[-1], "heldout_auc": auc,
                  "best_epoch": -1})
    return candidate(model, auc, -1)


def score_heldout(model_f, model, data: Labelled, pre: Preprocessing, batch_exams: int, device, table) -> float:
    """The held-out AUC of the current weights; NaN without a held-out part (nothing to choose by)."""
    if not len(data.held):
        return float("nan")
    return heldout_auc(data.labels[data.held],
                       heldout_probs(model_f, model, data.cache, data.held, pre, batch_exams, device, table))


def heldout_auc(y: np.ndarray, p: np.ndarray) -> float:
    """AUC on the held-out part of train; NaN when it holds one class only (tiny label budgets)."""
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def candidate(model, auc: float, epoch: int) -> dict:
    """A state the held-out selection may keep: a CPU copy of the weights, its AUC (-1 when undefined), its epoch."""
    return {"auc": auc if np.isfinite(auc) else -1.0, "epoch": epoch,
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


@torch.no_grad()
def heldout_probs(model_f, model, cache, held: np.ndarray, pre: Preprocessing, batch_exams: int, device,
                  table) -> np.ndarray:
    """P(positive) of the held-out exams; a linear probe reads its feature table instead of the encoder."""
    if table is None:
        return predict_probs(model_f, cache, held, pre, device, batch_exams)
    flat, lengths = gather_index(cache, held, model.slices)
    logits = model_f(table[torch.from_numpy(flat).to(device)], lengths.to(device), from_features=True)
    return logits.float().softmax(1)[:, 1].cpu().numpy()
