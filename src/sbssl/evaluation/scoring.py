"""`sbssl evaluate`: a fine-tuned ensemble scored once on a split, and the evaluation files written."""

from __future__ import annotations

from pathlib import Path

from sbssl.engine.inference import load_ensemble, score_split
from sbssl.evaluation.report_files import write_evaluation


def evaluate_run(run: Path, root: Path, split: str, out: Path, device="cpu") -> dict:
    """Per-member and ensemble-mean probabilities of `run` on `split` of `root`, written to `out`."""
    ens = load_ensemble(run, device)
    records, probs = score_split(ens, root, split)
    return write_evaluation(out, ens.cfg, split, records, probs, ens.seeds, ens.init)
