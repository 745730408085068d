"""Where the generator put the ACL in each stored exam: the label-free training target of the ACL localiser.

The generator knows every ligament it draws, so a localiser needs no annotation: an exam's draws are replayed
from the set's seed without rendering (render_exam's order: findings, knee, the planes' streams, the subject's
variation), and the ligament's midpoint is mapped into the stored sagittal series. A family's smooth
deformation (a few mm) is ignored; the demo's generator, which predates families, is not replayed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from sbssl.data.layout import PLANES
from sbssl.synth.anatomy import acl_ends, sample_knee
from sbssl.synth.dataset import assign_labels
from sbssl.synth.exam import Exam, Labels, sample_findings
from sbssl.synth.family import (
    acquisition_grid,
    draw_acquisition,
    family,
    mix_member,
    stored_grid,
    vary_anatomy,
)

RECORDED = ("acl_slice", "acl_row", "acl_col")  # findings columns of a renderer that writes the midpoint


def acl_midpoint(exam: Exam) -> np.ndarray:
    """(slice, row, col) of the ACL's midpoint in a rendered exam's stored sagittal series."""
    return _to_voxel(exam.knee, exam.grids["sagittal"])


def replayed_acl_midpoint(spec: dict, case: int, labels: Labels) -> np.ndarray:
    """(slice, row, col) of the ACL's midpoint in case `case` of a family set with this synth.json `spec`,
    from its draws alone (a hundred times faster than rendering it)."""
    fam = family(mix_member(str(spec["family"]), case))
    if fam is None:
        raise ValueError("the ACL's position is replayed from a family's draws; the demo generator's set has none")
    rng = np.random.default_rng([spec["seed"], case])
    knee = sample_knee(rng, sample_findings(rng, labels, spec["difficulty"]))
    streams = rng.spawn(len(PLANES))
    knee = vary_anatomy(knee, fam, rng.spawn(1)[0])
    r = streams[PLANES.index("sagittal")]
    acq = draw_acquisition(fam, r, spec["size"])
    return _to_voxel(knee, stored_grid(acquisition_grid("sagittal", knee, acq, r), spec["size"], acq.reversed))


def set_acl_midpoints(root: Path, split: str) -> dict[str, np.ndarray]:
    """{case: (slice, row, col)} for every exam of a generated family set's split (its findings/synth.json): the
    midpoints its findings CSV records (phantom2's renderer writes them), the others replayed."""
    spec = json.loads((Path(root) / "findings" / "synth.json").read_text())["spec"]
    recorded = recorded_acl_midpoints(Path(root) / "findings" / f"{split}.csv")
    first = 0 if split == "train" else spec["train"]
    labels = assign_labels(spec[split], split, spec["seed"], spec["prevalence"] if split == "train" else 0.0)
    cases = {f"{first + i:04d}": (first + i, lab) for i, lab in enumerate(labels)}
    return {c: recorded[c] if c in recorded else replayed_acl_midpoint(spec, i, lab) for c, (i, lab) in cases.items()}


def recorded_acl_midpoints(findings: Path) -> dict[str, np.ndarray]:
    """{case: (slice, row, col)} from a findings CSV's acl_slice, acl_row, acl_col columns, where filled."""
    with open(findings, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["case"]: np.array([float(r[k]) for k in RECORDED], np.float64) for r in rows
            if all(r.get(k) not in (None, "") for k in RECORDED)}


def _to_voxel(knee, grid) -> np.ndarray:
    femoral, tibial = acl_ends(knee)
    mid = (femoral + tibial) / 2
    mid[0] *= -1 if knee.mirror else 1  # the phantom is a right knee; a left one is its mirror image
    return np.linalg.solve(grid.axes, mid - grid.origin)
