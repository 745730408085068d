"""What does each ensemble member read? Its scores on a synthetic set's valid exams against what the generator
recorded about each exam (`findings/valid.csv`): the AUC within each value of one knob (the sequence, by default:
a model that reads the ligament itself scores in PD as in fat-suppressed images) and Spearman's rho with other
findings (a tear's companions, bone bruise and effusion, bright with fat suppressed). A model at chance is a bug
report; this says which part of the data it fails on, without training anything.

usage: python benchmarks/member_findings.py --data ROOT RUN [RUN ...] [--within sag_sequence]
                                            [--findings bone_bruise,effusion_mm] [--name NAME] [--no-record]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from _common import record
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from sbssl.evaluation.report_files import read_predictions


def read_findings(root: Path, split: str = "valid") -> dict[str, dict[str, str]]:
    """The generator's per-exam record, by case."""
    with open(Path(root) / "findings" / f"{split}.csv", newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def auc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def score_table(run: Path) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(cases, labels, scores by column): every member's and the ensemble's, on the run's valid exams."""
    cases, ensemble, y = read_predictions(run / "predictions.csv")
    with open(run / "predictions_members.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    members = [k for k in next(iter(rows.values())) if k != "case"]
    scores = {m: np.array([float(rows[c][m]) for c in cases]) for m in members}
    return cases, y, {**scores, "ensemble": ensemble}


def read_out(run: Path, findings: dict[str, dict[str, str]], within: str, companions: list[str]) -> dict:
    """One run's rows: for each member and the ensemble, AUC overall, within each value of `within`, and rho with
    each companion finding (a finding stored as text counts as present unless it is 'none')."""
    cases, y, scores = score_table(run)
    group = np.array([findings[c][within] for c in cases])
    comp = {k: np.array([_as_number(findings[c][k]) for c in cases]) for k in companions}
    out = {}
    for name, s in scores.items():
        row = {"auc": auc_or_nan(y, s)}
        row |= {f"auc_{within}={g}": auc_or_nan(y[group == g], s[group == g]) for g in sorted(set(group))}
        row |= {f"rho_{k}": float(spearmanr(s, v)[0]) for k, v in comp.items()}
        out[name] = row
    return out


def _as_number(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return float(v != "none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="fine-tuning runs scored on ROOT's valid split")
    ap.add_argument("--data", required=True, type=Path, help="the synthetic set (its findings/valid.csv)")
    ap.add_argument("--within", default="sag_sequence")
    ap.add_argument("--findings", default="bone_bruise,effusion_mm")
    ap.add_argument("--name", default="member_findings")
    ap.add_argument("--no-record", action="store_true", help="print only (no results/member_findings.json)")
    a = ap.parse_args()
    findings, companions = read_findings(a.data), [k for k in a.findings.split(",") if k]
    result = {str(r): read_out(r, findings, a.within, companions) for r in a.runs}
    members = [row for rows in result.values() for k, row in rows.items() if k != "ensemble"]
    summary = []
    for key in members[0]:
        v = np.array([m[key] for m in members])
        summary.append(f"{key} {np.nanmedian(v):.2f} ({np.nanmin(v):.2f}-{np.nanmax(v):.2f})")
    line = f"{len(members)} members, median (range): " + "; ".join(summary)
    for run, rows in result.items():
        print(run, " ".join(f"{k} {v:.2f}" for k, v in rows["ensemble"].items()))
    print(line)
    if not a.no_record:
        record(a.name, {"runs": result}, "python benchmarks/member_findings.py " + " ".join(sys.argv[1:]), line)


if __name__ == "__main__":
    main()
