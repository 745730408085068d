"""Stage 2: slice-based fine-tuning of an ensemble (paper section 4.1).

Per member (its own seed): minority oversampling to the majority's count each epoch,
the pretraining augmentations drawn once per exam (shared by its slices), cross-entropy,
AdamW with warmup + cosine. The epoch kept is the one with the best AUC on a held-out,
stratified part of the *train* split, when that part can rank exams (`finetune.select`); with
fewer labels every labelled exam fits and the last epoch is kept. The reported split is never
looked at until the ensemble is final.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

from sbssl.config import to_yaml
from sbssl.data.cache import slice_cache_for
from sbssl.data.datasets import ExamDataset, gather_index, loader
from sbssl.data.layout import ALL_PLANES, synth_family
from sbssl.data.preprocessing import Preprocessing
from sbssl.engine import checkpoint as ckpt
from sbssl.engine.inference import (
    config_json,
    load_ensemble,
    predict_probs,
    rows_read,
    score_split,
    slice_feature_table,
)
from sbssl.engine.loop import Trainer, train_one_epoch
from sbssl.engine.probe import fit_readout
from sbssl.engine.run_log import RunLog
from sbssl.engine.runtime import run_in_folder, seed_everything
from sbssl.engine.sampling import holdout_can_rank, labelled_subset, oversampled_order, stratified_holdout
from sbssl.engine.schedules import param_groups
from sbssl.engine.tasks import ExamTask
from sbssl.errors import SbsslError
from sbssl.evaluation.report_files import write_evaluation
from sbssl.models.build import build_classifier
from sbssl.models.encoder_file import PretrainedEncoder, encoder_init
from sbssl.utils.io import atomic_write, atomic_write_json, atomic_write_text
from sbssl.utils.rundir import CHECKPOINTS, CONFIG, METRICS, RUN, SPLIT, model_file

log = logging.getLogger("sbssl")
FINISHED = METRICS


def finetune(cfg: DictConfig, root: Path, out: Path, overwrite: bool = False, resume: bool = False) -> Path:
    if cfg.data.plane == ALL_PLANES:
        raise SbsslError("data.plane=all is for pretraining; a classifier reads one plane (fuse the three after)")
    return run_in_folder(cfg.trainer, out, overwrite, resume, FINISHED,
                         lambda fabric, folder: _finetune(cfg, fabric, Path(root), folder))


def _finetune(cfg: DictConfig, fabric, root: Path, out: Path) -> Path:
    rank0 = fabric.global_rank == 0
    asked, init = cfg, encoder_init(str(cfg.init))
    if init is not None:  # the encoder's architecture and input geometry; its preprocessing record below
        cfg = init.configure(asked)
        if rank0 and str(cfg.init).startswith("builtin:") and synth_family(root) != "demo":
            log.warning("%s: the shipped encoder was pretrained on the demo's synthetic knees and barely transfers "
                        "to data of another kind (benchmarks/transfer.py); pretrain on this folder's own slices "
                        "first: sbssl pretrain --config pretrain/cpu --data %s --out DIR, then init=DIR", root, root)
    cache, records = slice_cache_for(cfg, root, "train", fabric)
    pre = (replace(init.preprocessing, roi=str(cfg.data.roi)) if init is not None
           else Preprocessing.from_config(cfg, cache.mean, cache.std))
    labels = np.array([r.label for r in records])
    if len(np.unique(labels)) < 2:
        raise SbsslError(f"{root}: the train split has only one class for task '{cfg.data.task}'")
    used = labelled_subset(labels, cfg.finetune.labels, cfg.train.seed)
    if choose_on_heldout(cfg, labels[used]):  # the held-out part chooses the epoch (LP-FT: the read-out is one)
        fit, held = (used[i] for i in stratified_holdout(labels[used], cfg.finetune.val_fraction, cfg.train.seed))
    else:  # nothing to choose, or too few exams to choose by: every labelled exam fits (9 positives in 50, not 7)
        fit, held = used, used[:0]
    if rank0:
        atomic_write_text(out / CONFIG, to_yaml(asked))  # as the user asked; what the encoder set is in run.json
        atomic_write_json(out / RUN, {"root": str(Path(root).resolve()), "preprocessing": pre.to_dict(),
                                      "init": f"gmml:{init.path}" if init is not None else "scratch",
                                      "architecture": init.architecture() if init is not None else {}})
        atomic_write_text(out / SPLIT, json.dumps({"fit": [records[i].case for i in fit],
                                                  "held_out": [records[i].case for i in held]}) + "\n")
    for m in range(cfg.finetune.ensemble):
        seed = cfg.train.seed + m
        path = out / model_file(seed)
        if path.exists():
            continue
        state, info = train_member(cfg, pre, fabric, cache, labels, fit, held, seed, init, out)
        if rank0:
            meta = {"config": config_json(cfg), "preprocessing": json.dumps(pre.to_dict()), "seed": str(seed),
                    **{k: str(v) for k, v in info.items()}}
            atomic_write(path, lambda p, s=state, md=meta: save_file(s, str(p), metadata=md))
        fabric.barrier()
    if rank0:  # the valid split, scored once; metrics.json is the run's finished marker
        ens = load_ensemble(out, fabric.device)
        write_evaluation(out, ens.cfg, "valid", *score_split(ens, root, "valid"), ens.seeds, ens.init)
    fabric.barrier()
    return out


def choose_on_heldout(cfg: DictConfig, y: np.ndarray) -> bool:
    """`finetune.select`: auc always holds a part out, last never, auto when that part can rank its exams. A read-out
    alone (train.epochs=0) is one candidate, not chosen among anything."""
    f = cfg.finetune
    if cfg.train.epochs == 0 or f.select == "last":
        return False
    return f.select == "auc" or holdout_can_rank(y, f.val_fraction, f.min_heldout)


def train_member(cfg: DictConfig, pre: Preprocessing, fabric, cache, labels: np.ndarray, fit: np.ndarray,
                 held: np.ndarray, seed: int, init: PretrainedEncoder | None, out: Path
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """Train one ensemble member; returns the weights of its best held-out epoch (without a held-out part, its
    last)."""
    rank, world = fabric.global_rank, fabric.world_size
    seed_everything(seed + rank, cfg.train.deterministic)
    torch.manual_seed(seed)
    model = build_classifier(cfg, init)
    ck_dir = out / CHECKPOINTS / f"member-{seed}"
    st = ckpt.load_checkpoint(ck_dir)
    read = np.concatenate([fit, held])  # every exam this member reads: its slices feed statistics and tables
    if init is not None:  # also on resume: a frozen encoder's feature table is rebuilt before the checkpoint loads
        recalibrate_batch_norm(model, cache, read, pre, fabric.device)
    done = -1 if st is None else st["epoch"]
    runlog = RunLog(out, f"member-{seed}", cfg.trainer.loggers, rank == 0, None if st is None else st["step"])
    # a member's log lines after its checkpoint go (all of them, a probe's too, when it restarts)
    runlog.trim(lambda r: r.get("member") != seed or (st is not None and r.get("epoch", 0) <= done))
    probe = cfg.finetune.probe_steps > 0 and st is None
    features = None
    if cfg.finetune.freeze or probe:  # the frozen encoder's features, computed once, looked up by cache row
        with fabric.autocast():
            features = slice_feature_table(model.to(fabric.device), cache, read, pre, fabric.device)
    table = features if cfg.finetune.freeze else None  # linear probing: the head trains on lookups only
    if cfg.finetune.freeze:
        model.encoder.requires_grad_(False)
    best = {"auc": -1.0, "epoch": -1, "state": None}
    if probe:  # LP-FT's first stage (engine/probe.py); the fitted read-out is the first candidate kept
        best = probe_readout(cfg, model, features, cache, labels, fit, held, pre, seed, fabric.device, runlog)
    del features
    depth = len(getattr(model.encoder, "blocks", []))
    groups = param_groups(model, cfg.finetune.layer_decay, depth)
    ge = cfg.finetune.batch_exams * world
    lr = cfg.train.lr * ge / 256
    opt = torch.optim.AdamW(groups, lr=lr)
    model_f, opt_f = fabric.setup(model, opt)
    task = ExamTask(cfg, pre)
    n_pos = int(labels[fit].sum())
    balanced = cfg.finetune.oversample and 0 < n_pos < len(fit)
    n_per_epoch = 2 * max(n_pos, len(fit) - n_pos) if balanced else len(fit)  # = len(oversampled_order(...))
    steps_per_epoch = max(n_per_epoch // ge, 1)
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps > 0:
        total = min(total, cfg.train.max_steps)
    warmup = min(int(cfg.train.warmup_epochs * steps_per_epoch), total // 2)
    trainer = Trainer(fabric, model_f, opt_f, cfg.train, lr, total, warmup, seed, ck_dir / "last.pt",
                      label=f"member {seed}, ")
    start = 0
    if st is not None:
        model.load_state_dict(st["model"])
        opt_f.load_state_dict(st["optimizer"])
        ckpt.set_rng_state(st["rng"])
        start, trainer.step = st["epoch"] + 1, st["step"]
        best = {"auc": st["best_auc"], "epoch": st["best_epoch"], "state": st["best_state"]}
    be, dev = cfg.finetune.batch_exams, fabric.device
    exams_ds = ExamDataset(cache, labels, model.slices, read=table is None)

    def loss_of(batch: dict, draw) -> torch.Tensor:
        y, lengths = batch["labels"].to(dev), batch["lengths"].to(dev)
        if table is not None:  # linear probing: the frozen encoder's features, looked up
            return ExamTask.from_features(model_f, table[batch["rows"].to(dev)], lengths, y)
        return task(model_f, batch["slices"].to(dev), lengths, y, draw)

    for epoch in range(start, cfg.train.epochs):
        if trainer.finished:
            break
        order = oversampled_order(labels, fit, torch.Generator().manual_seed(seed * 1000 + epoch),
                                  cfg.finetune.oversample)
        batches = [order[b * ge: (b + 1) * ge][rank * be: (rank + 1) * be] for b in range(steps_per_epoch)]
        rec = train_one_epoch(trainer, loader(exams_ds, batches, cfg.data.workers, dev), loss_of,
                              lambda b: len(b["exams"]), epoch,
                              f"member {seed} epoch {epoch + 1}/{cfg.train.epochs}", steps_per_epoch, "exams")
        model_f.eval()
        auc = score_heldout(model_f, model, cache, labels, held, pre, cfg.finetune.batch_exams, fabric.device,
                            table)
        if not np.isfinite(auc) or auc > best["auc"]:  # no held-out part (or one class in it): the last epoch
            best = candidate(model, auc, epoch)
        runlog.steps(trainer.pop_history())
        runlog.epoch({"member": seed, **rec, "heldout_auc": auc, "best_epoch": best["epoch"]})
        if rank == 0:
            ckpt.save_checkpoint(ck_dir, {"model": model.state_dict(), "optimizer": opt_f.state_dict(),
                                          "epoch": epoch, "step": trainer.step, "rng": ckpt.rng_state(),
                                          "best_auc": best["auc"], "best_epoch": best["epoch"],
                                          "best_state": best["state"]})
        fabric.barrier()
    runlog.close()
    state = best["state"] if best["state"] is not None else copy.deepcopy(model.state_dict())
    return {k: v.contiguous() for k, v in state.items()}, {"best_epoch": best["epoch"], "heldout_auc": best["auc"]}


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


def probe_readout(cfg: DictConfig, model, features, cache, labels: np.ndarray, fit: np.ndarray, held: np.ndarray,
                  pre: Preprocessing, seed: int, device, runlog: RunLog) -> dict:
    """Fit the read-out on frozen features (`finetune.probe_steps`), log it as epoch -1, and return it as the
    best state so far: if fine-tuning then only distorts the features, the held-out part keeps the probe."""
    losses = fit_readout(model, features, cache, labels, fit, cfg.finetune.probe_steps, cfg.finetune.probe_lr,
                         cfg.finetune.probe_batch_exams, seed, cfg.finetune.oversample, cfg.finetune.probe_l2,
                         cfg.finetune.probe_solver, cfg.finetune.probe_restarts)
    model.eval()
    auc = score_heldout(model, model, cache, labels, held, pre, cfg.finetune.batch_exams, device, features)
    log.info("member %d: read-out fitted on frozen features (%s, %d %s, loss %.4f -> %.4f), held-out AUC %.3f",
             seed, cfg.finetune.probe_solver, len(losses),
             "evaluations" if cfg.finetune.probe_solver == "lbfgs" else "steps", losses[0], losses[-1], auc)
    runlog.epoch({"member": seed, "epoch": -1, "phase": "probe", "step": 0, "loss": losses[-1], "heldout_auc": auc,
                  "best_epoch": -1})
    return candidate(model, auc, -1)


def score_heldout(model_f, model, cache, labels: np.ndarray, held: np.ndarray, pre: Preprocessing,
                  batch_exams: int, device, table) -> float:
    """The held-out AUC of the current weights; NaN without a held-out part (nothing to choose by)."""
    if not len(held):
        return float("nan")
    return heldout_auc(labels[held], heldout_probs(model_f, model, cache, held, pre, batch_exams, device, table))


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
