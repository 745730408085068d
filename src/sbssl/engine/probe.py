"""The read-out fitted on a frozen encoder's features: a linear probe, and the first stage of LP-FT.

LP-FT (Kumar et al. 2022, "Fine-tuning can distort pretrained features"): fit the aggregator and head on the
frozen encoder's features first, then fine-tune everything from there. Fine-tuning a pretrained encoder under a
random head sends the head's random gradients into the encoder's features during the first steps, and a CPU
budget of a few dozen steps never recovers them (docs/history.md: GMML fine-tunes whose training loss hardly
moved where scratch's fell). With the read-out fitted first, the encoder's first gradients already point at the
task.

The features are looked up in a table computed once (`inference.slice_feature_table`), so the read-out is
fitted as a linear probe should be, to convergence: full-batch L-BFGS (`finetune.probe_solver=lbfgs`, as
scikit-learn fits logistic regression), where the fine-tuning loop's batches of 8 exams and a few epochs leave it
undertrained. The earlier solver, 600 AdamW steps on oversampled batches (`adamw`), stopped short of the optimum
by a seed-dependent margin: on the same 400 exams its valid AUC ranged 0.56-0.81 with the seed
(docs/history.md, session 6).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sbssl.data.cache import SliceCache
from sbssl.data.datasets import gather_index
from sbssl.engine.inference import FeatureTable
from sbssl.engine.sampling import exam_batches
from sbssl.engine.schedules import cosine
from sbssl.models.slice_classifier import SliceClassifier

WEIGHT_DECAY = 1e-2  # AdamW's default; the read-out has few parameters and trains for a fixed number of steps


def readout_parameters(model: SliceClassifier) -> list[torch.nn.Parameter]:
    """What a probe trains: everything but the encoder (aggregator and head)."""
    return [p for n, p in model.named_parameters() if not n.startswith("encoder.")]


def weight_penalty(params: list[torch.nn.Parameter], l2: float, n: int) -> torch.Tensor | float:
    """A Gaussian prior on the read-out's weight matrices (biases free), in the units of logistic regression:
    (l2 / n) * |W|^2 added to the mean loss over n labelled exams equals l2 pseudo-exams of prior evidence, so
    one setting serves every label budget and its pull fades as labels grow. AdamW's decoupled decay is no
    substitute: at lr 3e-3 for 600 steps it shrinks the weights by ~1%, which leaves the token scorer's 192
    weights fitted to 7 positives."""
    if l2 <= 0:
        return 0.0
    return l2 / n * sum(p.pow(2).sum() for p in params if p.ndim > 1)


def fit_readout(model: SliceClassifier, table: FeatureTable, cache: SliceCache, labels: np.ndarray,
                fit: np.ndarray, steps: int, lr: float, batch_exams: int, seed: int, oversample: bool = True,
                l2: float = 0.0, solver: str = "lbfgs", restarts: int = 1) -> list[float]:
    """Fit the aggregator and head of `model` on table lookups under the prior `weight_penalty(l2)`: `steps`
    full-batch L-BFGS iterations from `restarts` initial weights (`solver="lbfgs"`, the best objective kept;
    lr and batch_exams unused) or `steps` AdamW steps on batches of `batch_exams` exams (cosine from `lr`). The
    encoder is not run and not changed. Returns the data term of the loss at every step (L-BFGS: at every
    evaluation of the run kept)."""
    if solver == "lbfgs":
        return _fit_lbfgs(model, table, cache, labels, fit, steps, oversample, l2, restarts, seed)
    params = readout_parameters(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    batches = exam_batches(labels, fit, min(batch_exams, len(fit)), torch.Generator().manual_seed(seed), oversample)
    device = table.feats.device
    y_all = torch.as_tensor(labels, device=device)
    model.train()
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine(step, steps, lr, 0.0)
        exams = next(batches)
        rows, lengths = gather_index(cache, exams, model.slices)
        logits = model.classify(table[torch.from_numpy(rows).to(device)], lengths.to(device))
        loss = F.cross_entropy(logits.float(), y_all[torch.from_numpy(exams).to(device)])
        opt.zero_grad(set_to_none=True)
        (loss + weight_penalty(params, l2, len(fit))).backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def exam_weights(y: torch.Tensor, oversample: bool) -> torch.Tensor:
    """Per-exam loss weights of mean 1: with oversampling each class carries half of the loss (what oversampled
    batches give in expectation), without it every exam counts the same."""
    pos = float(y.float().mean())
    if not oversample or not 0 < pos < 1:
        return torch.ones(len(y), device=y.device)
    return torch.where(y == 1, 0.5 / pos, 0.5 / (1 - pos))


@torch.no_grad()
def freeze_readout_norms(model: SliceClassifier, chunks) -> None:
    """Set the read-out's batch norms to the statistics of all the exams it is fitted on (a cumulative average
    over `chunks` of (features, lengths)) and leave them in eval mode: a full-batch objective must not depend on
    how it is chunked."""
    norms = [m for m in model.aggregate.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum, m.training = None, True  # None: a cumulative average, as torch's update_bn
    for feats, lengths in chunks:
        model.classify(feats, lengths)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum, m.training = momentum, False


def reinit_readout(model: SliceClassifier, seed: int) -> None:
    """Draw the read-out's linear layers afresh (their default init) from `seed`; batch norms keep their statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in [*model.aggregate.modules(), *model.head.modules()]:
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()


def _fit_lbfgs(model: SliceClassifier, table: FeatureTable, cache: SliceCache, labels: np.ndarray, fit: np.ndarray,
               iters: int, oversample: bool, l2: float, restarts: int, seed: int,
               chunk_exams: int = 128) -> list[float]:
    """Full-batch L-BFGS (strong Wolfe line search) on the exam-weighted cross-entropy + the prior, from the
    read-out's own initial weights and `restarts - 1` fresh draws; the lowest objective is kept (on the fitted
    exams alone: no held-out or valid exam is looked at). Restarts because the smooth maximum over instances
    makes the objective non-convex: which token carries a positive exam's evidence is a discrete choice, and
    on the selection set the optimum reached from one init fitted and scored worse than another's (training
    loss 0.28 vs 0.20, valid AUC 0.56 vs 0.74). The gradient is accumulated over chunks of exams, so memory
    stays that of one chunk whatever the label budget. Returns the data term at every evaluation of the run
    kept."""
    params = readout_parameters(model)
    device = table.feats.device
    y = torch.as_tensor(labels[fit], device=device)
    w = exam_weights(y, oversample)
    index = []  # each chunk's table rows and slice counts, gathered once: every evaluation only looks them up
    for i in range(0, len(fit), chunk_exams):
        rows, lengths = gather_index(cache, fit[i: i + chunk_exams], model.slices)
        index.append((torch.from_numpy(rows).to(device), lengths.to(device)))

    def chunks():
        for rows, lengths in index:
            yield table[rows], lengths

    def objective(losses: list[float], grad: bool = True) -> torch.Tensor:
        """Data term (appended to `losses`) + prior at the current weights; with `grad`, gradients accumulated."""
        data, start = 0.0, 0
        for feats, lengths in chunks():
            k = len(lengths)
            ce = F.cross_entropy(model.classify(feats, lengths).float(), y[start: start + k], reduction="none")
            loss = (ce * w[start: start + k]).sum() / len(fit)
            if grad:
                loss.backward()
            data, start = data + float(loss.detach()), start + k
        prior = weight_penalty(params, l2, len(fit))
        if grad and l2 > 0:
            prior.backward()
        losses.append(data)
        return torch.tensor(data + float(torch.as_tensor(prior).detach()))  # a float or a 0-d tensor alike

    model.eval()
    freeze_readout_norms(model, chunks())
    best: tuple[float, list[torch.Tensor], list[float]] | None = None
    for r in range(max(restarts, 1)):
        if r:
            reinit_readout(model, seed * 1000 + r)
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-6, tolerance_change=1e-9)
        losses: list[float] = []

        def closure(losses: list[float] = losses, opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            return objective(losses)

        opt.step(closure)
        with torch.no_grad():
            final = float(objective([], grad=False))
        if best is None or final < best[0]:
            best = (final, [p.detach().clone() for p in params], losses)
    with torch.no_grad():
        for p, v in zip(params, best[1], strict=True):
            p.copy_(v)
            p.grad = None
    return best[2]
