"""Which labelled exams train, which are held out, and in what order: the label budget (nested subsets), the
stratified held-out part of train that chooses epochs, and the paper's minority oversampling."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) exam indices; the held-out part keeps the class balance, >= 1 of each class on each side.
    Written out rather than sklearn's train_test_split(stratify=...), which refuses a class with one member and
    cannot promise both classes on both sides, as small label budgets (4 positives in 25 exams) need."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[:k])
        fit.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Each exam's fold in 0..k-1, every class dealt round the folds in a seeded order, so that every fold keeps
    the class balance (as sklearn's StratifiedKFold, which refuses a class with fewer than k exams)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = (np.arange(len(idx)) + rng.integers(k)) % k  # a random first fold: no fold gets every extra
    return fold


def holdout_can_rank(labels: np.ndarray, fraction: float, min_per_class: int) -> bool:
    """Whether a stratified held-out `fraction` of these labels holds `min_per_class` exams of each class. Below
    that its AUC moves in steps of 1/(positives x negatives) and choosing an epoch on it is a coin toss (at 25
    labels it holds 1 positive: AUC 0, 0.25, ..., 1), while it costs a fifth of the few labels there are."""
    counts = np.bincount(labels.astype(int), minlength=2)
    return bool(round(fraction * counts.min()) >= min_per_class)


def labelled_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n exam indices keeping the class balance (>= 2 per class); nested: the subset for n is inside the one for
    any larger n with the same seed, so a label-efficiency curve adds exams rather than redrawing them."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    pos, neg = rng.permutation(np.flatnonzero(labels == 1)), rng.permutation(np.flatnonzero(labels == 0))
    k = min(max(2, round(n * len(pos) / len(labels))), len(pos), n - 2)
    return np.sort(np.concatenate([pos[:k], neg[: n - k]]))


def oversampled_order(labels: np.ndarray, idx: np.ndarray, gen: torch.Generator, oversample: bool = True
                      ) -> np.ndarray:
    """One epoch: every exam once, the minority class resampled up to the majority's count."""
    pos, neg = idx[labels[idx] == 1], idx[labels[idx] == 0]
    parts = [pos, neg]
    if oversample and len(pos) and len(neg) and len(pos) != len(neg):
        small, big = (pos, neg) if len(pos) < len(neg) else (neg, pos)
        extra = small[torch.randint(len(small), (len(big) - len(small),), generator=gen).numpy()]
        parts = [small, extra, big]
    allx = np.concatenate(parts)
    return allx[torch.randperm(len(allx), generator=gen).numpy()]


def exam_batches(labels: np.ndarray, idx: np.ndarray, batch: int, gen: torch.Generator, oversample: bool = True
                 ) -> Iterator[np.ndarray]:
    """Endless batches of exams: epoch after epoch of minority-oversampled orders, cut into `batch` exams."""
    buf = np.zeros(0, dtype=int)
    while True:
        while len(buf) < batch:
            buf = np.concatenate([buf, oversampled_order(labels, idx, gen, oversample)])
        yield buf[:batch]
        buf = buf[batch:]
