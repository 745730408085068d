"""One synthetic exam: a knee with findings, resliced into MRNet's three planes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbssl.data.layout import PLANES
from sbssl.synth.anatomy import Findings, Knee, paint_knee, sample_knee
from sbssl.synth.appearance import render_signal
from sbssl.synth.family import Acquisition, Family, one_thread, render_series, vary_anatomy
from sbssl.synth.geometry import PLANE_AXES, PLANE_CENTRE, Canvas, SliceGrid, fine_grid, supersampling

# MRNet's slice-count ranges per plane and split (valid sagittal is narrower).
SLICE_RANGES = {
    ("train", "sagittal"): (17, 51), ("valid", "sagittal"): (21, 45),
    ("train", "coronal"): (17, 58), ("valid", "coronal"): (17, 58),
    ("train", "axial"): (19, 61), ("valid", "axial"): (19, 61),
}
_COVERAGE = {"sagittal": (85.0, 115.0), "coronal": (80.0, 110.0), "axial": (95.0, 130.0)}


@dataclass
class Labels:
    abnormal: int
    acl: int
    meniscus: int


def slice_count(rng: np.random.Generator, split: str, plane: str) -> int:
    lo, hi = SLICE_RANGES[(split, plane)]
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    return int(np.clip(round(rng.normal(mid - 0.1 * half, half / 2.2)), lo, hi))


def plane_grid(plane: str, n_slices: int, size: int, knee: Knee, rng: np.random.Generator) -> SliceGrid:
    """Field of view, position, in-plane tilt and slice spacing of one series."""
    normal, row, col = (np.array(v, np.float64) for v in PLANE_AXES[plane])
    angle = np.deg2rad(rng.uniform(-5, 5))
    row, col = np.cos(angle) * row + np.sin(angle) * col, -np.sin(angle) * row + np.cos(angle) * col
    fov = rng.uniform(130.0, 165.0)
    px = fov / size
    spacing = rng.uniform(*_COVERAGE[plane]) / max(n_slices - 1, 1)
    centre = np.array(PLANE_CENTRE[plane]) + rng.uniform(-8, 8, 3)
    axes = np.stack([normal * spacing, row * px, col * px], 1) / knee.scale
    origin = centre / knee.scale - axes @ (np.array([n_slices, size, size]) - 1) / 2
    return SliceGrid(origin=origin, axes=axes, shape=(n_slices, size, size))


def render_plane(knee: Knee, plane: str, grid: SliceGrid, rng: np.random.Generator,
                 difficulty: float) -> np.ndarray:
    size = grid.shape[1]
    ss = supersampling(size)
    canvas = Canvas(fine_grid(grid, ss), mirror_x=knee.mirror)
    paint_knee(canvas, knee)
    noise = rng.uniform(0.015, 0.04) * (0.6 + difficulty)
    blur = rng.uniform(0.3, 0.9) * size / 256
    return render_signal(canvas.labels, plane, rng, noise, blur, ss)


ACL_TEAR_TYPES = ("partial", "complete", "chronic")


def acl_tear_type(severity: float) -> str:
    """The tear type a severity draws (anatomy._cruciates): partial < 0.4 <= complete < 0.85 <= chronic."""
    return "partial" if severity < 0.4 else "complete" if severity < 0.85 else "chronic"


def sample_acl_tear(rng: np.random.Generator, difficulty: float) -> float:
    """An ACL tear's severity, with conspicuity falling monotonically as difficulty rises.

    difficulty 0: every tear is a complete mid-substance tear with a wide fluid gap (the most conspicuous sign
    on a T2 sagittal slice). Rising difficulty mixes in partial tears (thickening and intermediate signal) and
    chronic absence (fat in an empty notch, nearly invisible on a fat-suppressed sequence), and narrows the gaps
    and abnormal segments within each type.
    """
    d = float(np.clip(difficulty, 0.0, 1.0))
    kind = rng.choice(3, p=[0.45 * d, 1.0 - 0.7 * d, 0.25 * d])
    conspicuity = 1.0 - d * rng.uniform()  # in [1 - d, 1]
    if kind == 0:
        return 0.1 + 0.29 * conspicuity
    if kind == 1:
        return 0.4 + 0.44 * conspicuity
    return float(rng.uniform(0.85, 1.0))


def sample_findings(rng: np.random.Generator, labels: Labels, difficulty: float) -> Findings:
    """Imaging findings consistent with the labels; difficulty makes tears subtler (see sample_acl_tear)."""
    f = Findings()
    if labels.acl:
        f.acl_tear = True
        f.acl_severity = sample_acl_tear(rng, difficulty)
        acute = f.acl_severity < 0.85  # bone bruises fade within months: rare with a chronic absence
        f.bone_bruise = bool(rng.random() < ((0.8 - 0.5 * difficulty) if acute else 0.1))
    elif rng.random() < 0.5 * difficulty:
        f.acl_degeneration = float(rng.uniform(0.4, 1.0))
    if labels.meniscus:
        f.meniscus_tear = True
        f.meniscus_side = -1 if rng.random() < 0.65 else 1
        f.meniscus_tear_height = float(rng.uniform(0.3, 0.7))
        f.meniscus_tear_tilt = float(rng.choice([0.0, rng.uniform(0.3, 0.9)]))
        f.meniscus_tear_extent = float(rng.uniform(0.55, 1.0) * (1.2 - 0.4 * difficulty))
        f.meniscus_tear_width = float(rng.uniform(0.7, 1.4) * (1.2 - 0.4 * difficulty))
    f.effusion = float(rng.uniform(0.5, 2.5))
    if labels.abnormal:
        if labels.acl or labels.meniscus:
            if rng.random() < 0.6:
                f.effusion = float(rng.uniform(3, 12))
        else:
            _other_abnormality(rng, f)
    return f


def _other_abnormality(rng: np.random.Generator, f: Findings) -> None:
    """Abnormal without ACL/meniscus tear: one or two of effusion, bone lesion, cartilage, cyst."""
    kinds = rng.choice(4, size=int(rng.integers(1, 3)), replace=False)
    for kind in kinds:
        if kind == 0:
            f.effusion = float(rng.uniform(4, 14))
        elif kind == 1:
            in_femur = rng.random() < 0.5
            c = (rng.uniform(-22, 22), rng.uniform(-10, 10), rng.uniform(12, 40) if in_femur else rng.uniform(-30, -10))
            f.bone_lesion = (c, tuple(rng.uniform(4, 10, 3)))
        elif kind == 2:
            side = rng.choice([-1, 1])
            f.cartilage_defect = (side * 20.0, rng.uniform(-5, 15), 2.0)
        else:
            f.baker_cyst = float(rng.uniform(7, 14))


@dataclass
class Exam:
    volumes: dict[str, np.ndarray]  # plane -> (slices, size, size), uint8 (uint16 for a 12-bit family)
    knee: Knee
    grids: dict[str, SliceGrid]
    acquisitions: dict[str, Acquisition] | None = None  # a family's drawn knobs per plane


def findings_row(case: int, f: Findings) -> dict[str, object]:
    """One exam's findings as a flat record (the synthetic set's ground truth beyond the labels)."""
    return {"case": f"{case:04d}", "acl_tear": acl_tear_type(f.acl_severity) if f.acl_tear else "none",
            "acl_severity": round(f.acl_severity, 4), "acl_degeneration": round(f.acl_degeneration, 4),
            "bone_bruise": int(f.bone_bruise),
            "meniscus_tear": ("medial" if f.meniscus_side < 0 else "lateral") if f.meniscus_tear else "none",
            "effusion_mm": round(f.effusion, 2), "bone_lesion": int(f.bone_lesion is not None),
            "cartilage_defect": int(f.cartilage_defect is not None), "baker_cyst_mm": round(f.baker_cyst, 2)}


@one_thread()
def render_exam(seed: int, case: int, split: str, labels: Labels, size: int = 256,
                difficulty: float = 0.5, family: Family | None = None) -> Exam:
    """All three planes of one exam; the bytes depend only on (seed, case, size, difficulty, family), not on the
    machine's thread count (`one_thread`). With a family the knee and its findings are drawn as without one;
    the acquisition is the family's, and the subject may vary (`vary_anatomy`)."""
    rng = np.random.default_rng([seed, case])
    findings = sample_findings(rng, labels, difficulty)
    knee = sample_knee(rng, findings)
    if family is not None:
        streams = rng.spawn(len(PLANES))
        knee = vary_anatomy(knee, family, rng.spawn(1)[0])  # spawned after the planes': their draws stay
        series = {p: render_series(knee, p, family, size, r) for p, r in zip(PLANES, streams, strict=True)}
        return Exam({p: s[0] for p, s in series.items()}, knee, {p: s[1] for p, s in series.items()},
                    {p: s[2] for p, s in series.items()})
    counts = {p: slice_count(rng, split, p) for p in PLANES}
    volumes, grids = {}, {}
    for plane, r in zip(PLANES, rng.spawn(len(PLANES)), strict=True):
        grids[plane] = plane_grid(plane, counts[plane], size, knee, r)
        volumes[plane] = render_plane(knee, plane, grids[plane], r, difficulty)
    return Exam(volumes, knee, grids)


def acl_slice(exam: Exam) -> int:
    """Index of the sagittal slice nearest the ACL's midpoint (for galleries)."""
    grid, k = exam.grids["sagittal"], exam.knee
    x = 5.0 * (-1 if k.mirror else 1)
    s = (x - grid.origin[0]) / grid.axes[0, 0]
    return int(np.clip(round(s), 0, grid.shape[0] - 1))
