"""Plane fusion, MRNet's way (Bien et al. 2018): a logistic regression on the planes' exam probabilities.

Honest fit: the regression is fitted on *train* exams that no plane model trained on, their held-out part (the
same exams for every plane when the plane runs share seed, label budget and held-out fraction), and the fused
model is then scored once on the split it reports. Where each member held out its own fold
(`finetune.holdout=member`), every exam is scored by the members that held it out (out of fold, as in stacking),
so the fit uses every exam some member held out. The held-out part also chose each model's epoch, so its
probabilities are slightly optimistic; the valid split is never touched by either choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from sbssl.errors import SbsslError
from sbssl.evaluation.metrics import exam_metrics
from sbssl.evaluation.report_files import roc_plot, write_member_predictions, write_predictions
from sbssl.utils.io import atomic_write_json
from sbssl.utils.rundir import CONFIG, FUSION, MEMBER_PREDICTIONS, METRICS, PREDICTIONS, ROC, SPLIT, run_root


def run_config(run: Path):
    path = Path(run) / CONFIG
    if not path.is_file():
        raise SbsslError(f"{run}: not a fine-tuned run (no config.yaml)")
    return OmegaConf.load(path)


def held_out_parts(run: Path) -> dict[int | None, list[str]]:
    """The run's held-out train exams: {None: cases} when its members share one part (`finetune.holdout=shared`),
    {member seed: cases} when each held out its own (`member`)."""
    path = Path(run) / SPLIT
    try:
        split = json.loads(path.read_text())
        if split.get("members"):
            return {int(seed): list(cases) for seed, cases in split["members"].items()}
        return {None: list(split["held_out"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise SbsslError(f"{path}: missing or unreadable (fuse needs the run's held-out train exams)") from None


def held_out_cases(run: Path) -> list[str]:
    """Every train exam that some member of the run held out, in the run's order."""
    return list(dict.fromkeys(c for cases in held_out_parts(run).values() for c in cases))


def out_of_fold_probs(run: Path, root: Path, cases: list[str], device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(labels, probability) of held-out train exams, each the mean of the members that held it out (all of them
    for a shared part): no exam is scored by a model that trained on it."""
    from sbssl.engine.inference import load_ensemble, score_split

    parts, ens = held_out_parts(run), load_ensemble(run, device)
    records, probs = score_split(ens, root, "train", cases)
    if None in parts:
        held = np.ones_like(probs)
    else:  # (members, exams): which member held out which exam
        sets = [set(parts.get(seed, ())) for seed in ens.seeds]
        held = np.array([[r.case in part for r in records] for part in sets], float)
    if not held.any(0).all():
        raise SbsslError(f"fuse: {run} has no member model for some of its held-out exams (model files missing?)")
    return np.array([r.label for r in records]), (probs * held).sum(0) / held.sum(0)


def ensemble_probs(run: Path, root: Path, split: str, cases: list[str] | None = None,
                   device: str = "cpu") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(cases, labels, ensemble-mean probability) of a run on a split, for the given cases (default: all)."""
    from sbssl.engine.inference import load_ensemble, score_split

    records, probs = score_split(load_ensemble(run, device), root, split, cases)
    return [r.case for r in records], np.array([r.label for r in records]), probs.mean(0)


def check_runs(runs: list[Path]) -> tuple[list, str, list[str]]:
    """The runs' configs, their shared task and held-out cases; one clear line when they cannot be fused."""
    if len(runs) < 2:
        raise SbsslError("fuse: give at least two plane runs")
    cfgs = [run_config(r) for r in runs]
    tasks = {c.data.task for c in cfgs}
    if len(tasks) != 1:
        raise SbsslError(f"fuse: the runs are for different tasks ({', '.join(sorted(tasks))})")
    planes = [c.data.plane for c in cfgs]
    if len(set(planes)) != len(planes):
        raise SbsslError(f"fuse: two runs for the same plane ({', '.join(planes)})")
    held = [held_out_cases(r) for r in runs]
    for r, h in zip(runs[1:], held[1:], strict=True):
        if sorted(h) != sorted(held[0]):
            raise SbsslError(f"fuse: {r} held out other train exams than {runs[0]}; train the plane runs with "
                             "the same train.seed, finetune.labels, finetune.val_fraction, finetune.holdout and "
                             "finetune.ensemble")
    if not held[0]:
        raise SbsslError(f"fuse: {runs[0]} held out no train exams (a read-out alone, train.epochs=0, or "
                         "finetune.select=last, or too few labels for auto, fits on all of them); train the plane "
                         "runs with train.epochs >= 1 and finetune.select=auc to fuse them")
    if len(set(held[0])) < 4:
        raise SbsslError(f"fuse: {runs[0]} held out {len(held[0])} train exams; too few to fit the fusion")
    return cfgs, tasks.pop(), held[0]


def fuse(runs: list[Path], out: Path, root: Path | None = None, split: str = "valid", device: str = "cpu") -> dict:
    """Fit the fusion on held-out train exams, score it on `split`; writes the files `evaluate` writes plus
    fusion.json (planes, weights, intercept, the exams it was fitted on)."""
    from sklearn.linear_model import LogisticRegression

    runs = [Path(r) for r in runs]
    cfgs, task, held = check_runs(runs)
    root = Path(root or run_root(runs[0]))
    planes = [str(c.data.plane) for c in cfgs]
    fit_cols, y_fit = [], None
    for r in runs:
        y, p = out_of_fold_probs(r, root, held, device)
        fit_cols.append(p)
        if y_fit is not None and not np.array_equal(y, y_fit):
            raise SbsslError(f"fuse: {r} labels the held-out exams differently from {runs[0]}")
        y_fit = y
    assert y_fit is not None
    if len(np.unique(y_fit)) < 2:
        raise SbsslError(f"fuse: the held-out train exams of {runs[0]} hold one class only")
    cols, cases, y = [], None, None
    for r in runs:
        c, yy, p = ensemble_probs(r, root, split, cases, device)
        cases, y = c, yy
        cols.append(p)
    assert cases is not None and y is not None
    lr = LogisticRegression(C=1.0).fit(np.stack(fit_cols, 1), y_fit)
    probs = np.stack(cols)
    fused = lr.predict_proba(probs.T)[:, 1]
    metrics = {"task": task, "plane": "+".join(planes), "split": split, **exam_metrics(y, fused),
               "members": len(runs), "init": ",".join(sorted({str(c.init) for c in cfgs})), "model": "fusion",
               "aggregator": "logistic regression over planes",
               "member_metrics": [{"plane": pl, **exam_metrics(y, q)} for pl, q in zip(planes, probs, strict=True)]}
    out = Path(out)
    write_predictions(out / PREDICTIONS, cases, fused, y)
    write_member_predictions(out / MEMBER_PREDICTIONS, cases, probs, planes)
    roc_plot(out / ROC, y, probs, fused, planes, f"{task} / fused / {split}", kind="plane")
    atomic_write_json(out / FUSION, {
        "task": task, "planes": planes, "runs": [str(r.resolve()) for r in runs], "root": str(root),
        "weights": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0]), "features": "plane probabilities",
        "fitted_on": {"split": "train (held-out part, out of fold)", "n": len(held), "positives": int(y_fit.sum())}})
    atomic_write_json(out / METRICS, metrics)  # written last: marks a finished fusion
    return metrics


def fused_probability(fusion: dict, plane_probs: dict[str, np.ndarray]) -> np.ndarray:
    """The fitted regression applied to per-plane probabilities (used by predict)."""
    z = float(fusion["intercept"]) + sum(w * plane_probs[pl] for w, pl in zip(fusion["weights"], fusion["planes"],
                                                                                strict=True))
    return 1.0 / (1.0 + np.exp(-z))
