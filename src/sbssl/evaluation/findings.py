"""Errors broken down by finding: sensitivity per ACL tear type (partial / complete / chronic).

The synthetic set writes its ground truth beside the data (`findings/{split}.csv`, see `sbssl.synth.dataset`);
real sets may ship the same file. A report then shows which kinds of tear a model misses, next to Table 1.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from sbssl.data.layout import FINDINGS_DIR

TEAR_TYPES = ("partial", "complete", "chronic")


def read_findings(root: Path, split: str) -> dict[int, dict[str, str]] | None:
    """case id -> findings row, or None when the dataset has no findings file."""
    path = Path(root) / FINDINGS_DIR / f"{split}.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return {int(r["case"]): r for r in csv.DictReader(f) if r.get("case", "").isdigit()}


def sensitivity_by_tear_type(predictions: Path, findings: dict[int, dict[str, str]], threshold: float = 0.5
                             ) -> dict[str, tuple[float, int]]:
    """tear type -> (share of those exams called positive at the threshold, number of exams)."""
    from sbssl.evaluation.report_files import read_predictions

    cases, prob, label = read_predictions(predictions)  # label -1 where unknown: never counted
    kinds = np.array([findings.get(int(c), {}).get("acl_tear", "") if c.isdigit() else "" for c in cases])
    out = {}
    for kind in TEAR_TYPES:
        sel = (kinds == kind) & (label == 1)
        if sel.any():
            out[kind] = (float((prob[sel] >= threshold).mean()), int(sel.sum()))
    return out
