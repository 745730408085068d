"""Exam-level metrics with stratified bootstrap intervals (vectorised: no per-resample loop).

AUC is the Mann-Whitney probability that a positive outscores a negative (ties count
half). For a bootstrap resample that draws positive i c_i times and negative j d_j
times, AUC* = c^T G d / (n_pos n_neg) with G_ij = [s_i > s_j] + 0.5 [s_i = s_j]; all
resamples are one batched product. Stratified: positives and negatives are resampled
separately, so every resample has both classes and the class balance of the data.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    pred = p >= threshold
    pos, neg = y == 1, y == 0
    return {"accuracy": float((pred == pos).mean()),
            "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
            "specificity": float((~pred[neg]).mean()) if neg.any() else float("nan")}


def _pair_matrix(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    sp, sn = p[y == 1], p[y == 0]
    return (sp[:, None] > sn[None]).astype(np.float64) + 0.5 * (sp[:, None] == sn[None])


def _counts(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)


def bootstrap_auc(y: np.ndarray, p: np.ndarray, reps: int = 2000, seed: int = 0) -> np.ndarray:
    """AUC of `reps` stratified bootstrap resamples."""
    g = _pair_matrix(y, p)
    rng = np.random.default_rng(seed)
    c, d = _counts(rng, g.shape[0], reps), _counts(rng, g.shape[1], reps)
    return np.einsum("bi,ij,bj->b", c, g, d) / (g.shape[0] * g.shape[1])


def auc_with_ci(y: np.ndarray, p: np.ndarray, reps: int = 2000, seed: int = 0, level: float = 0.95
                ) -> tuple[float, list[float]]:
    y, p = np.asarray(y), np.asarray(p, np.float64)
    if len(np.unique(y)) < 2:
        return float("nan"), [float("nan"), float("nan")]
    boot = bootstrap_auc(y, p, reps, seed)
    a = (1 - level) / 2
    return float(roc_auc_score(y, p)), [float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))]


def paired_auc_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, reps: int = 2000, seed: int = 0
                          ) -> dict:
    """AUC(a) - AUC(b) on the same exams, with the paired stratified bootstrap distribution."""
    y = np.asarray(y)
    g = _pair_matrix(y, np.asarray(p_a, np.float64)) - _pair_matrix(y, np.asarray(p_b, np.float64))
    rng = np.random.default_rng(seed)
    c, d = _counts(rng, g.shape[0], reps), _counts(rng, g.shape[1], reps)
    boot = np.einsum("bi,ij,bj->b", c, g, d) / (g.shape[0] * g.shape[1])
    diff = float(roc_auc_score(y, p_a) - roc_auc_score(y, p_b))
    return {"auc_a": float(roc_auc_score(y, p_a)), "auc_b": float(roc_auc_score(y, p_b)), "difference": diff,
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "p_value_one_sided": float((boot <= 0).mean()), "reps": reps, "n": int(len(y)),
            "positives": int(y.sum()), "bootstrap": boot.tolist()}


def seed_averaged_difference(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, reps: int = 2000,
                             seed: int = 0) -> dict:
    """Mean over training seeds of AUC(a) - AUC(b) on the same exams; probs_* are (seeds, exams), row k of both
    trained with seed k.

    `ci95_exams` applies each exam resample to every seed's pair: the seeds held fixed, so it holds the valid
    set's noise only (the models trained are the ones judged). `ci95` resamples the seeds too (a two-level
    bootstrap: seeds with replacement, then the exams), so it also holds the spread between training runs of
    the same recipe, which at CPU scale can exceed the exam noise: the interval to choose a recipe by.
    """
    y, probs_a, probs_b = np.asarray(y), np.atleast_2d(probs_a), np.atleast_2d(probs_b)
    k = len(probs_a)
    pairs = [paired_auc_difference(y, a, b, reps, seed) for a, b in zip(probs_a, probs_b, strict=True)]
    boot = np.array([r["bootstrap"] for r in pairs])  # (seeds, reps): the same exam resamples in every row
    pick = np.random.default_rng(seed + 1).integers(k, size=(reps, k))
    two_level = boot[pick, np.arange(reps)[:, None]].mean(1)
    per_seed = [r["difference"] for r in pairs]
    return {"auc_a": float(np.mean([r["auc_a"] for r in pairs])), "auc_b": float(np.mean([r["auc_b"] for r in pairs])),
            "difference": float(np.mean(per_seed)), "per_seed": per_seed,
            "seed_sd": float(np.std(per_seed, ddof=1)) if k > 1 else 0.0,
            "ci95": [float(np.quantile(two_level, 0.025)), float(np.quantile(two_level, 0.975))],
            "ci95_exams": [float(np.quantile(boot.mean(0), 0.025)), float(np.quantile(boot.mean(0), 0.975))],
            "p_value_one_sided": float((two_level <= 0).mean()), "reps": reps, "seeds": k, "n": int(len(y)),
            "positives": int(y.sum()), "bootstrap": two_level.tolist()}


def exam_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5, reps: int = 2000) -> dict:
    auc, ci = auc_with_ci(y, p, reps)
    return {"n": int(len(y)), "positives": int(np.sum(y)), **threshold_metrics(np.asarray(y), np.asarray(p),
                                                                              threshold),
            "auc": auc, "auc_ci95": ci, "threshold": threshold}
