"""The read-out fitted on a frozen encoder's features: a linear probe, and the first stage of LP-FT.

LP-FT (Kumar et al. 2022, "Fine-tuning can distort pretrained features"): fit the aggregator and head on the
frozen encoder's features first, then fine-tune everything from there. Fine-tuning a pretrained encoder under a
random head sends the head's random gradients into the encoder's features during the first steps, and a CPU
budget of a few dozen steps never recovers them (docs/results.md: GMML fine-tunes whose training loss hardly
moved where scratch's fell). With the read-out fitted first, the encoder's first gradients already point at the
task.

The features are looked up in a table computed once (`inference.slice_feature_table`), so a step costs a few
milliseconds: the read-out trains in large batches for hundreds of steps, as a linear probe should, where the
fine-tuning loop's batches of 8 exams and a few epochs leave it undertrained.
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
                l2: float = 0.0) -> list[float]:
    """Train the aggregator and head of `model` on table lookups for `steps` AdamW steps (cosine from `lr`),
    under the prior `weight_penalty(l2)`; the encoder is not run and not changed. Returns the loss of every
    step (the data term)."""
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
