"""The training loop both stages share: one epoch of optimiser steps.

Each step applies the per-iteration schedule (warm-up then cosine for the learning rate, cosine for the weight
decay), draws its randomness from a generator seeded by (seed, step) -- so a resumed or a distributed run replays
exactly the augmentations and masks of an uninterrupted single-process one -- computes the task's loss, stops or
skips on a NaN/inf loss (agreed by every rank, or DDP's all-reduce would hang), then backward, clipping, update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from sbssl.engine.runtime import finite_on_all_ranks
from sbssl.engine.schedules import apply_schedule, cosine
from sbssl.errors import SbsslError
from sbssl.utils.draw import Draw
from sbssl.utils.progress import progress

log = logging.getLogger("sbssl")


@dataclass
class Trainer:
    """The optimiser state of one run (a pretraining, or one ensemble member) and its step counter."""

    fabric: object
    model_f: torch.nn.Module
    opt_f: torch.optim.Optimizer
    train: DictConfig  # cfg.train: schedule, clipping, non-finite policy
    lr: float  # the peak learning rate, already scaled to the global batch
    total: int  # optimiser steps of the whole run
    warmup: int
    seed: int  # the base of every step's generator
    checkpoint: Path  # named when a non-finite loss stops the run
    label: str = ""  # "member 3, " in fine-tuning messages
    step: int = 0
    history: list = field(default_factory=list)  # (step, loss tensor, lr, wd) of each update since `pop_history`

    @property
    def finished(self) -> bool:
        return self.step >= self.total

    def schedule(self) -> tuple[float, float]:
        t = self.train
        lr = cosine(self.step, self.total, self.lr, t.min_lr, self.warmup)
        wd = cosine(self.step, self.total, t.weight_decay, t.weight_decay_end)
        apply_schedule(self.opt_f, lr, wd, self.step)
        return lr, wd

    def pop_history(self) -> list[dict]:
        """Every update's step, loss (this rank's), lr and weight decay since the last call, as numbers: the
        losses stay on the device until here, so logging them costs one host sync per epoch, not per step."""
        if not self.history:
            return []
        steps, losses, lrs, wds = zip(*self.history, strict=True)
        self.history = []
        return [{"step": s, "loss": v, "lr": lr, "wd": wd}
                for s, v, lr, wd in zip(steps, torch.stack(losses).float().tolist(), lrs, wds, strict=True)]

    def draw(self) -> Draw:
        f = self.fabric
        gen = torch.Generator(f.device).manual_seed(self.seed * 1_000_003 + self.step)
        return Draw(f.device, gen, f.global_rank, f.world_size)

    def optimise(self, loss: torch.Tensor, epoch: int) -> bool:
        """Backward and update; False (nothing changed) when the loss is not finite and the policy is skip."""
        f = self.fabric
        if not finite_on_all_ranks(f, loss):
            where = f"{self.label}epoch {epoch} step {self.step}"
            if self.train.nonfinite != "skip":
                raise SbsslError(f"non-finite loss at {where}; weights not updated; last good checkpoint: "
                                 f"{self.checkpoint}")
            log.warning("non-finite loss at %s: step skipped", where)
            self.opt_f.zero_grad(set_to_none=True)
            self.step += 1
            return False
        f.backward(loss)
        if self.train.clip_grad > 0:
            f.clip_gradients(self.model_f, self.opt_f, max_norm=self.train.clip_grad, error_if_nonfinite=False)
        self.opt_f.step()
        self.opt_f.zero_grad(set_to_none=True)
        self.step += 1
        return True


def train_one_epoch(trainer: Trainer, batches: Iterable, loss_of: Callable[[object, Draw], torch.Tensor],
                    size_of: Callable[[object], int], epoch: int, title: str, steps: int, unit: str) -> dict:
    """One epoch: `loss_of(batch, draw)` for each batch of this rank; returns the epoch's log fields (mean
    loss over ranks, the last lr and weight decay, throughput in `unit` per second over all ranks). The bar
    shows the running mean of this rank's loss, which ends at the number the log records (one process)."""
    f = trainer.fabric
    trainer.model_f.train()
    t0, seen, n, status = time.perf_counter(), 0, 0, ""
    loss_sum = torch.zeros((), device=f.device)
    lr = wd = float("nan")
    with progress(title, steps, "steps", enabled=None if f.global_rank == 0 else False) as bar:
        for b, batch in enumerate(batches):
            if trainer.finished:
                break
            lr, wd = trainer.schedule()
            loss = loss_of(batch, trainer.draw())
            if not trainer.optimise(loss, epoch):
                continue
            seen += size_of(batch) * f.world_size
            loss_sum += loss.detach()
            trainer.history.append((trainer.step, loss.detach(), lr, wd))
            n += 1
            if b % 5 == 0 or b == steps - 1:  # a host sync, so not every step
                status = f"loss {(loss_sum / n).item():.4f} {seen / max(time.perf_counter() - t0, 1e-9):.1f} {unit}/s"
            bar.advance(1, status=status)
    elapsed = time.perf_counter() - t0
    mean = float(f.all_reduce(loss_sum / max(n, 1), reduce_op="mean")) if n else None
    return {"epoch": epoch, "step": trainer.step, "loss": mean, "lr": lr, "wd": wd,
            f"{unit}_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed}
