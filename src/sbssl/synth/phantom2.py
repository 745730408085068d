"""A second knee phantom, written apart from the first: a held-out check that a recipe has not learnt one phantom.

Every family in `family.py` re-draws the acquisition and the subject but keeps one anatomy model (`anatomy.py`),
one tissue table and one renderer (`appearance.py`); a recipe chosen on them can still depend on what they share,
and the independent phantom a user's knees resemble more did not forgive that (docs/results.md). This module
shares none of it:

- **anatomy**: signed distances (mm) of ellipsoids, elliptic cylinders and capsules, in a right-knee frame (x
  lateral, y posterior, z superior, the joint line at z = 0; a left knee is the mirror image), with a femur
  notched between two condyles under a sloping roof, a sloped tibial plateau with spines, menisci as wedges about
  each plateau, a patella on its tendons, Hoffa's and popliteal fat, vessels; bone is cortex over marrow by
  distance, cartilage a shell;
- **tissue**: proton density, T1 and T2 per tissue and a spin-echo signal equation at drawn TR and TE (PD, PD
  fat-suppressed, T2 fat-suppressed), fat suppression by each tissue's fat fraction;
- **renderer**: each slice sampled at twice the native matrix over sub-slices spanning its thickness (partial
  volume), a smooth coil sensitivity, then k-space: truncation to the native matrix (Gibbs ringing), a phase
  error on alternate lines (N/2 ghosts) in some series, complex Gaussian noise (magnitude: Rician), zero-filled
  interpolation to the stored size as scanners reconstruct, 8- or 12-bit storage.

Tears: complete (a gap of fluid or granulation, the distal stump sagging), partial (a thinned segment in swollen
tissue), chronic (no ligament); mimics on intact knees: mucoid degeneration, a ganglion beside the ligament,
bone bruises without a tear; meniscal tears as a fluid cleft in one posterior horn, intrasubstance degeneration as
a mimic. Labels keep MRNet's prevalences (`dataset.assign_labels`). Nothing here was tuned on a recipe's result:
it is reported on, never chosen on (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sbssl.data.layout import PLANES

if TYPE_CHECKING:
    from sbssl.synth.exam import Labels

NAME = "phantom2"  # `sbssl synth --family phantom2`
DESCRIPTION = "phantom2 (synth/phantom2.py): another anatomy model, tissue model and renderer; --difficulty unused"

# Tissues: proton density, T1 (ms), T2 (ms), fat fraction (what fat suppression removes).
TISSUES = ("air", "fat", "muscle", "marrow", "cortex", "cartilage", "fluid", "meniscus", "ligament", "tendon",
           "tear", "edema", "vessel")
AIR, FAT, MUSCLE, MARROW, CORTEX, CARTILAGE, FLUID, MENISCUS, LIGAMENT, TENDON, TEAR, EDEMA, VESSEL = range(13)
PROPERTIES = np.array([
    [0.0, 1000, 1], [1.0, 290, 90], [0.72, 900, 38], [0.95, 330, 75], [0.06, 1000, 2], [0.78, 1050, 42],
    [1.0, 3000, 600], [0.32, 900, 7], [0.45, 950, 16], [0.28, 900, 5], [0.82, 1200, 95], [0.92, 1250, 85],
    [0.12, 1300, 150]], np.float32)
FAT_FRACTION = np.array([0, 1, 0, .85, 0, 0, 0, 0, 0, 0, 0, .3, 0], np.float32)
TEXTURE = np.array([0, .03, .05, .06, 0, .02, .01, .03, .03, .02, .04, .05, .01], np.float32)
# (TR range, TE range, fat suppressed), ms
SEQUENCES = {"pd": ((2000, 3500), (18, 35), False), "pdfs": ((2000, 3500), (25, 40), True),
             "t2fs": ((3000, 5000), (55, 85), True)}
SEQUENCE_ODDS = {"sagittal": (0.4, 0.4, 0.2), "coronal": (0.6, 0.2, 0.2), "axial": (0.3, 0.4, 0.3)}


# --- signed distances (mm): negative inside ---------------------------------------------------------------------
def ellipsoid(p: tuple, c, r) -> np.ndarray:
    q = [(p[i] - c[i]) / r[i] for i in range(3)]
    return (np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) - 1.0) * min(r)


def column(p: tuple, c, r, z0: float, z1: float) -> np.ndarray:
    """An elliptic cylinder along z (centre c[:2], radii r[:2]) between z0 and z1."""
    d = (np.sqrt(((p[0] - c[0]) / r[0]) ** 2 + ((p[1] - c[1]) / r[1]) ** 2) - 1.0) * min(r)
    return np.maximum(d, np.maximum(z0 - p[2], p[2] - z1))


def capsule(p: tuple, a, b, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the segment a-b minus r, and the position t in [0, 1] along it of the nearest point."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ab = b - a
    t = np.clip(sum((p[i] - a[i]) * ab[i] for i in range(3)) / float(ab @ ab), 0.0, 1.0)
    d = np.sqrt(sum((p[i] - a[i] - t * ab[i]) ** 2 for i in range(3)))
    return d - r, t


@dataclass
class Subject:
    """One knee: shape parameters (mm) and findings. Drawn by `draw_subject`."""

    shape: dict
    findings: dict
    mirror: bool


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def draw_subject(rng: np.random.Generator, acl: int, meniscus: int, abnormal: int) -> Subject:
    """One knee: its shapes, then findings that agree with the labels, then its side."""
    shape = draw_shape(rng)
    return Subject(shape, draw_findings(rng, acl, meniscus, abnormal), bool(rng.random() < 0.5))


def draw_shape(rng: np.random.Generator) -> dict:
    """Sizes and positions (mm) of every structure, scaled together by the subject's size `s`."""
    u = lambda lo, hi: _u(rng, lo, hi)  # noqa: E731
    s = u(0.85, 1.15)
    sh = {"limb": (u(52, 66) * s, u(48, 60) * s), "limb_y": u(4, 12) * s, "fat": u(3, 14),
          "rf": u(12, 16) * s, "yf": u(-2, 4) * s, "xc": u(18, 22) * s, "cond": (u(12, 15) * s, u(22, 27) * s,
          u(16, 19) * s), "jf": u(2.2, 3.2), "jt": u(2.2, 3.2), "tc": u(1.8, 3.0), "wn": u(9, 12) * s,
          "roof": u(14, 20) * s, "roof_slope": np.tan(np.deg2rad(u(25, 45))), "plateau": (u(36, 42) * s,
          u(24, 29) * s), "tib_slope": np.tan(np.deg2rad(u(3, 10))), "tib_depth": u(16, 22) * s,
          "rt": u(13, 17) * s, "pat": (u(18, 22) * s, u(8, 10) * s, u(15, 19) * s), "pat_z": u(22, 34) * s,
          "xm": u(18, 21) * s, "men": (u(14, 17) * s, u(20, 25) * s), "men_in": u(0.5, 0.6), "men_h": u(5, 7),
          "ra": u(2.8, 4.2) * s, "rp": u(3.5, 5.0) * s, "scale": s}
    sh["yc"] = sh["yf"] + u(6, 10) * s
    sh["yt"] = sh["yf"] + u(2, 6) * s
    sh["yn"] = sh["yf"] + u(-2, 2) * s
    return sh


def draw_findings(rng: np.random.Generator, acl: int, meniscus: int, abnormal: int) -> dict:
    """The ACL's tear or an intact knee's mimic, the meniscus's, effusion, and an abnormal knee's other findings."""
    u = lambda lo, hi: _u(rng, lo, hi)  # noqa: E731
    f = {"acl": "none", "eff": u(0.5, 3.0), "bruise": False}
    if acl:
        f["acl"] = str(rng.choice(["complete", "partial", "chronic"], p=[0.55, 0.3, 0.15]))
        f["acl_t0"], f["acl_len"], f["sag"] = u(0.3, 0.55), u(0.15, 0.35), u(10, 35)
        f["gap"] = FLUID if rng.random() < 0.7 else TEAR
        f["bruise"] = bool(rng.random() < (0.1 if f["acl"] == "chronic" else 0.6))
    else:
        f["mimic"] = str(rng.choice(["none", "mucoid", "ganglion"], p=[0.72, 0.2, 0.08]))
        f["bruise"] = bool(rng.random() < 0.05)
    f["men"] = "none"
    if meniscus:
        f["men"] = "medial" if rng.random() < 0.6 else "lateral"
        f["men_height"], f["men_tilt"], f["men_extent"] = u(0.3, 0.7), u(-0.8, 0.8), u(0.5, 1.0)
        f["men_width"] = u(0.8, 1.6)
    elif rng.random() < 0.25:
        f["men_degeneration"] = "medial" if rng.random() < 0.6 else "lateral"
    if abnormal and (acl or meniscus) and rng.random() < 0.6:
        f["eff"] = u(4, 12)
    elif abnormal and not (acl or meniscus):
        for kind in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
            if kind == 0:
                f["eff"] = u(5, 14)
            elif kind == 1:
                f["lesion"] = ((u(-20, 20), u(-8, 12), u(12, 40) if rng.random() < 0.5 else u(-30, -10)),
                               (u(4, 9), u(4, 9), u(4, 9)))
            elif kind == 2:
                f["cartilage_defect"] = float(rng.choice([-1.0, 1.0]))
            else:
                f["baker"] = u(7, 14)
    return f


def acl_ends(sh: dict) -> tuple[np.ndarray, np.ndarray]:
    """The ACL's femoral (posterior-superior, in the notch) and tibial (anterior spine) attachments."""
    yF = sh["yc"] + 0.5 * sh["cond"][1]
    zF = sh["jf"] + sh["roof"] + sh["roof_slope"] * (yF - sh["yn"]) - sh["ra"] - 1.0
    zF = min(zF, sh["jf"] + 1.6 * sh["cond"][2])
    femoral = np.array([min(0.7 * sh["wn"], 8.0), yF, zF], np.float32)
    tibial = np.array([2.5 * sh["scale"], sh["yt"] - 10.0 * sh["scale"], -sh["jt"] + 1.0], np.float32)
    return femoral, tibial


# --- painting -----------------------------------------------------------------------------------------------------
class Canvas:
    """Tissue labels at a set of points (x, y, z arrays); later paint covers earlier."""

    def __init__(self, p: tuple[np.ndarray, np.ndarray, np.ndarray]):
        self.p = p
        self.labels = np.full(p[0].shape, AIR, np.int8)

    def paint(self, inside: np.ndarray, tissue: int, over: tuple[int, ...] | None = None) -> None:
        if over is not None:
            inside = inside & np.isin(self.labels, over)
        self.labels[inside] = tissue


BONE = (MARROW, CORTEX)
NOT_BONE = tuple(t for t in range(len(TISSUES)) if t not in BONE)


def paint_knee(cv: Canvas, subj: Subject) -> None:
    """Soft tissue first, then cartilage, bone, patella and tendons, menisci, cruciates, marrow findings."""
    sh, f = subj.shape, subj.findings
    paint_soft_tissue(cv, sh, f)
    femur = femur_distance(cv, sh, f)
    tibia, top = tibia_distance(cv, sh)
    plat = sh["plateau"]
    fibula = column(cv.p, (0.75 * plat[0], sh["yt"] + 0.75 * plat[1]), (7 * sh["scale"],) * 2, -90,
                    -10 * sh["scale"])
    for d in (femur, tibia, fibula):
        cv.paint(d < 0, CORTEX)
        cv.paint(d < -1.4, MARROW)
    paint_patella(cv, sh)
    for side in (-1, 1):
        paint_meniscus(cv, sh, f, side, top)
    paint_cruciates(cv, sh, f)
    paint_marrow_findings(cv, sh, f)


def patella_centre(sh: dict) -> tuple[float, float]:
    """(y, z) of the patella's centre: in front of the trochlea, above the joint line."""
    return sh["yf"] - 17 * sh["scale"] - 4 - sh["pat"][1], sh["jf"] + sh["pat_z"]


def paint_soft_tissue(cv: Canvas, sh: dict, f: dict) -> None:
    """Subcutaneous fat over muscle, popliteal fat and vessels, a Baker's cyst, the joint space, Hoffa's fat pad,
    the suprapatellar pouch (effusion) and, for a large effusion, the posterior recess."""
    p, s = cv.p, sh["scale"]
    limb = column(p, (0, sh["limb_y"]), sh["limb"], -1e3, 1e3)
    cv.paint(limb < 0, FAT)
    cv.paint(limb < -sh["fat"], MUSCLE)
    yp_fossa = sh["limb_y"] + 0.5 * sh["limb"][1]
    cv.paint(ellipsoid(p, (0, yp_fossa, 5), (16 * s, 12 * s, 70)) < 0, FAT)
    for dx, r in ((-3.0, 3.5), (3.5, 2.5)):
        cv.paint(column(p, (dx, yp_fossa), (r, r), -1e3, 1e3) < 0, VESSEL)
    if f.get("baker"):
        b = f["baker"]
        cv.paint(ellipsoid(p, (-14, yp_fossa - 4, 4), (b, 0.7 * b, 1.5 * b)) < 0, FLUID)
    cond, plat = sh["cond"], sh["plateau"]
    cv.paint(ellipsoid(p, (0, sh["yt"], 0), (plat[0] + 2, plat[1] + 3, sh["jf"] + sh["jt"] + 0.5)) < 0, FLUID)
    yp, zp = patella_centre(sh)
    cv.paint(ellipsoid(p, (0, yp + 10 * s, sh["jf"] - 3), (20 * s, 10 * s, 14 * s)) < 0, FAT)
    eff = f["eff"]
    cv.paint(ellipsoid(p, (0, sh["yf"] - sh["rf"] - eff / 2 - 1, zp + 18 * s), (24 * s, max(eff / 2, 0.6), 22 * s))
             < 0, FLUID)
    if eff > 4:
        cv.paint(ellipsoid(p, (0, sh["yc"] + cond[1] + 1, sh["jf"] + 10), (30, eff / 3, 12)) < 0, FLUID)


def femur_distance(cv: Canvas, sh: dict, f: dict) -> np.ndarray:
    """The femur's signed distance (shaft, metaphysis, two condyles, the notch cut under its sloping roof); paints
    the notch's fat and the condyles' cartilage (less a defect's)."""
    p, s, cond = cv.p, sh["scale"], sh["cond"]
    x, y, z = p
    zc = sh["jf"] + cond[2]
    roof = np.minimum(sh["jf"] + sh["roof"] + sh["roof_slope"] * (y - sh["yn"]), zc + cond[2])
    notch = np.maximum(np.maximum(np.abs(x) - sh["wn"], np.maximum(sh["yn"] - y, y - sh["yc"] - cond[1])), z - roof)
    cv.paint(notch < 0, FAT)
    condyles = np.minimum(ellipsoid(p, (sh["xc"], sh["yc"], zc), cond), ellipsoid(p, (-sh["xc"], sh["yc"], zc), cond))
    femur = np.minimum(np.minimum(column(p, (0, sh["yf"]), (sh["rf"], sh["rf"]), 25 * s, 1e3),
                                  ellipsoid(p, (0, sh["yf"] + 3, 30 * s), (30 * s, 20 * s, 26 * s))), condyles)
    cartilage = (condyles > 0) & (condyles < sh["tc"]) & (z < zc + 0.3 * cond[2]) & (notch > 0)
    if f.get("cartilage_defect"):
        cartilage &= ellipsoid(p, (f["cartilage_defect"] * sh["xc"], sh["yc"] - 4, sh["jf"] + 1), (4, 4, 4)) > 0
    cv.paint(cartilage, CARTILAGE)
    return np.maximum(femur, -notch)


def tibia_distance(cv: Canvas, sh: dict) -> tuple[np.ndarray, np.ndarray]:
    """The tibia's signed distance (a sloped plateau on a tapering shaft, two spines) and its plateau's height at
    each point; paints the plateau's cartilage."""
    p, s = cv.p, sh["scale"]
    z = p[2]
    top = -sh["jt"] - sh["tib_slope"] * (p[1] - sh["yt"])
    tibia = np.maximum(column(p, (0, sh["yt"]), sh["plateau"], -sh["tib_depth"], 1e3), z - top)
    tibia = np.minimum(tibia, column(p, (0, sh["yt"] + 2), (sh["rt"], sh["rt"]), -1e3, -sh["tib_depth"] + 2))
    for sx in (-1, 1):
        tibia = np.minimum(tibia, ellipsoid(p, (sx * 5 * s, sh["yt"] - 2, -sh["jt"]), (4 * s, 7 * s, 4 * s)))
    cv.paint((tibia > 0) & (tibia < sh["tc"]) & (z > top - 0.5) & (z < top + sh["tc"] + 0.5), CARTILAGE)
    return tibia, top


def paint_patella(cv: Canvas, sh: dict) -> None:
    """The patella with its cartilage, the patellar tendon to the tuberosity and the quadriceps tendon."""
    p, s = cv.p, sh["scale"]
    x, y = p[0], p[1]
    yp, zp = patella_centre(sh)
    pat = ellipsoid(p, (0, yp, zp), sh["pat"])
    cv.paint((pat > 0) & (pat < sh["tc"] + 0.5) & (y > yp), CARTILAGE)
    cv.paint(pat < 0, CORTEX)
    cv.paint(pat < -1.4, MARROW)
    w = 14 * s
    low = (0, yp + 2, zp - sh["pat"][2] + 1)
    tuberosity = (0, sh["yt"] - sh["plateau"][1] + 3, -sh["jt"] - 25 * s)
    cv.paint((capsule(p, low, tuberosity, 3.0)[0] < 0) & (np.abs(x) < w), TENDON, over=NOT_BONE)
    cv.paint((capsule(p, (0, yp + 3, zp + sh["pat"][2] - 1), (0, sh["yf"] - sh["rf"] - 3, zp + 60), 3.5)[0] < 0)
             & (np.abs(x) < w + 4), TENDON, over=NOT_BONE)


def paint_marrow_findings(cv: Canvas, sh: dict, f: dict) -> None:
    """Bone bruises (lateral femoral condyle and posterolateral plateau) and a lesion, in marrow only."""
    p, cond, plat = cv.p, sh["cond"], sh["plateau"]
    if f["bruise"]:
        cv.paint(ellipsoid(p, (sh["xc"], sh["yc"] - 0.3 * cond[1], sh["jf"] + 5), (8, 10, 7)) < 0, EDEMA, (MARROW,))
        cv.paint(ellipsoid(p, (sh["xc"], sh["yt"] + 0.6 * plat[1], -sh["jt"] - 6), (9, 8, 6)) < 0, EDEMA, (MARROW,))
    if f.get("lesion"):
        cv.paint(ellipsoid(p, *f["lesion"]) < 0, FLUID, (MARROW,))


def paint_meniscus(cv: Canvas, sh: dict, f: dict, side: int, top: np.ndarray) -> None:
    """side +1 lateral, -1 medial: a wedge between rho = men_in and 1 of the meniscus ellipse, on the cartilage."""
    x, y, z = cv.p
    rx, ry = sh["men"]
    rho = np.sqrt(((x - side * sh["xm"]) / rx) ** 2 + ((y - sh["yt"]) / ry) ** 2)
    frac = (rho - sh["men_in"]) / (1 - sh["men_in"])
    base = top + sh["tc"]
    height = sh["men_h"] * frac
    wedge = (frac >= 0) & (frac <= 1) & (z > base - 0.5) & (z < base + height)
    cv.paint(wedge, MENISCUS, over=NOT_BONE)
    name = "lateral" if side > 0 else "medial"
    posterior = y > sh["yt"] + 0.3 * ry
    if f["men"] == name:
        level = base + height * (f["men_height"] + f["men_tilt"] * (frac - 0.5))
        cleft = posterior & (np.abs(z - level) < f["men_width"] / 2) & (frac < f["men_extent"])
        cv.paint(cleft, FLUID, over=(MENISCUS,))
    elif f.get("men_degeneration") == name:
        blob = ellipsoid(cv.p, (side * sh["xm"], sh["yt"] + 0.8 * ry, 0), (3, 2.5, 1.2))
        cv.paint(blob < 0, TEAR, over=(MENISCUS,))


def paint_cruciates(cv: Canvas, sh: dict, f: dict) -> None:
    """The PCL (an arc, two segments) and the ACL with its tear or mimic."""
    p = cv.p
    yn, s = sh["yn"], sh["scale"]
    pf = (-min(0.6 * sh["wn"], 7.0), yn + 5 * s, sh["jf"] + sh["roof"] + sh["roof_slope"] * 5 * s - sh["rp"] - 1)
    bend = (-4 * s, sh["yc"] + 0.55 * sh["cond"][1], sh["jf"] + 5)
    pt = (-2 * s, sh["yt"] + sh["plateau"][1] - 3, -sh["jt"] - 10)
    for a, b in ((pf, bend), (bend, pt)):
        cv.paint(capsule(p, a, b, sh["rp"])[0] < 0, LIGAMENT, NOT_BONE)
    fem, tib = acl_ends(sh)
    ra, kind = sh["ra"], f["acl"]
    d, t = capsule(p, fem, tib, ra)
    if kind == "none":
        mimic = f.get("mimic", "none")
        if mimic == "mucoid":
            cv.paint(capsule(p, fem, tib, 1.4 * ra)[0] < 0, TEAR, NOT_BONE)
            across = np.array([ra * 0.5, 0, 0], np.float32)
            for sgn in (-1, 1):
                cv.paint(capsule(p, fem + sgn * across, tib + sgn * across, 0.9)[0] < 0, LIGAMENT, NOT_BONE)
        else:
            cv.paint(d < 0, LIGAMENT, NOT_BONE)
            if mimic == "ganglion":
                mid = (fem + tib) / 2 + np.array([0, 1.5 * ra + 2, 0], np.float32)
                cv.paint(ellipsoid(p, mid, (4, 3, 5)) < 0, FLUID, NOT_BONE)
        return
    if kind == "chronic":
        return
    t0, t1 = f["acl_t0"], f["acl_t0"] + f["acl_len"]
    if kind == "partial":
        cv.paint((capsule(p, fem, tib, 1.3 * ra)[0] < 0) & (t > t0) & (t < t1), TEAR, NOT_BONE)
        thin = np.where((t > t0) & (t < t1), 0.55 * ra, ra)
        cv.paint(d + ra - thin < 0, LIGAMENT, NOT_BONE)
        return
    a, b = fem + t0 * (tib - fem), fem + t1 * (tib - fem)
    cv.paint(capsule(p, a, b, 1.5 * ra)[0] < 0, f["gap"], NOT_BONE)
    cv.paint(capsule(p, fem, a, ra)[0] < 0, LIGAMENT, NOT_BONE)
    ang = np.deg2rad(f["sag"])  # the distal stump sags toward the plateau (a rotation about the tibial end, in y-z)
    v = b - tib
    sagged = tib + np.array([v[0], np.cos(ang) * v[1] - np.sin(ang) * v[2], np.sin(ang) * v[1] + np.cos(ang) * v[2]],
                            np.float32)
    cv.paint(capsule(p, sagged, tib, ra)[0] < 0, LIGAMENT, NOT_BONE)


# --- acquisition and rendering ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """One series' geometry: slice centres along `normal`, an in-plane grid of `matrix` native pixels."""

    plane: str
    sequence: str
    slices: int
    spacing: float
    thickness: float
    fov: float
    matrix: int
    centre: tuple[float, float, float]
    rotation: float  # degrees, in-plane
    reversed: bool
    ghost: float  # phase error (rad) on alternate k-space lines; 0: none
    snr: float
    storage: str

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(normal, row, col) unit vectors: sagittal slices lateral-wards, rows down, columns posterior-wards."""
        normal, row, col = {"sagittal": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
                            "coronal": ((0, 1, 0), (0, 0, -1), (1, 0, 0)),
                            "axial": ((0, 0, -1), (0, 1, 0), (1, 0, 0))}[self.plane]
        normal, row, col = (np.array(v, np.float64) for v in (normal, row, col))
        a = np.deg2rad(self.rotation)
        return normal, np.cos(a) * row + np.sin(a) * col, -np.sin(a) * row + np.cos(a) * col


def draw_series(plane: str, rng: np.random.Generator, size: int) -> Series:
    u = lambda lo, hi: _u(rng, lo, hi)  # noqa: E731
    n = int(rng.integers(20, 37) if plane == "sagittal" else rng.integers(18, 41))
    spacing = u(3.0, 4.0) if plane == "sagittal" else u(3.0, 4.5)
    centre = {"sagittal": (u(-6, 6), u(-2, 14), u(-8, 14)), "coronal": (u(-8, 8), u(-5, 10), u(-8, 14)),
              "axial": (u(-8, 8), u(-2, 14), u(-15, 15))}[plane]
    matrix = max(16, round(u(224, 320) * size / 256))
    return Series(plane, str(rng.choice(list(SEQUENCES), p=SEQUENCE_ODDS[plane])), n, spacing, spacing * u(0.8, 1.0),
                  u(120, 160), matrix, centre, u(-8, 8), bool(rng.random() < 0.5),
                  u(0.15, 0.5) if rng.random() < 0.2 else 0.0, u(8, 25), "uint12" if rng.random() < 0.25 else "uint8")


def tissue_signal(seq: str, rng: np.random.Generator) -> np.ndarray:
    """The spin-echo signal of every tissue at drawn TR and TE; PD and T2 jittered per exam."""
    (tr_lo, tr_hi), (te_lo, te_hi), suppressed = SEQUENCES[seq]
    tr, te = _u(rng, tr_lo, tr_hi), _u(rng, te_lo, te_hi)
    pd = PROPERTIES[:, 0] * rng.uniform(0.9, 1.1, len(TISSUES))
    t1, t2 = PROPERTIES[:, 1], PROPERTIES[:, 2] * rng.uniform(0.85, 1.15, len(TISSUES))
    s = pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2)
    if suppressed:
        s = s * (1 - FAT_FRACTION * (1 - _u(rng, 0.03, 0.15)))
    return s.astype(np.float32)


def slice_points(series: Series, k: int, depth: float, hr: int) -> tuple[np.ndarray, ...]:
    """Knee-frame (x, y, z) of slice k's points at `hr` x the native matrix, `depth` mm off its centre."""
    normal, row, col = series.axes()
    m = series.matrix * hr
    px = series.fov / m
    off = (k - (series.slices - 1) / 2) * series.spacing + depth
    grid = (np.arange(m, dtype=np.float64) - (m - 1) / 2) * px
    o = np.asarray(series.centre) + off * normal
    return tuple((o[i] + grid[:, None] * row[i] + grid[None, :] * col[i]).astype(np.float32) for i in range(3))


def coil(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A surface coil's sensitivity: brighter toward a drawn point near the field's edge."""
    h, w = shape
    c = rng.uniform(-0.6, 0.6, 2) * np.array([h, w])
    r = np.hypot(*np.meshgrid(np.arange(h) - h / 2 - c[0], np.arange(w) - w / 2 - c[1], indexing="ij"))
    return (1.0 + _u(rng, 0.2, 0.8) * np.exp(-(r / (_u(rng, 0.5, 0.9) * h)) ** 2)).astype(np.float32)


def texture(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth zero-mean random field of unit std (Gaussian correlation of `sigma` px): each tissue's grain."""
    f = np.fft.rfft2(rng.standard_normal(shape).astype(np.float32))
    ky, kx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
    field = np.fft.irfft2(f * np.exp(-2 * (np.pi * sigma) ** 2 * (ky ** 2 + kx ** 2)), s=shape)
    return (field / (field.std() + 1e-6)).astype(np.float32)


def kspace(img: np.ndarray, matrix: int, size: int, sigma: float, ghost: float, rng: np.random.Generator
           ) -> np.ndarray:
    """Sampled at `hr` x matrix -> the native matrix's k-space (truncation), alternate-line phase error, complex
    noise of standard deviation `sigma` (sigma / sqrt 2 in each channel), zero-filled to the stored size: the
    magnitude image."""
    n = img.shape[-1]
    f = np.fft.fftshift(np.fft.fft2(img), axes=(-2, -1))
    lo = (n - matrix) // 2
    f = f[..., lo:lo + matrix, lo:lo + matrix] * (matrix / n) ** 2
    if ghost:
        f[..., 1::2, :] *= np.exp(1j * ghost)
    f = f + sigma * matrix * (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / np.sqrt(2)
    if size >= matrix:
        pad = (size - matrix) // 2
        g = np.zeros(f.shape[:-2] + (size, size), np.complex128)
        g[..., pad:pad + matrix, pad:pad + matrix] = f
    else:
        lo = (matrix - size) // 2
        g = f[..., lo:lo + size, lo:lo + size]
    return np.abs(np.fft.ifft2(np.fft.ifftshift(g, axes=(-2, -1)))) * (size / matrix) ** 2


def render_series(subj: Subject, series: Series, size: int, rng: np.random.Generator) -> np.ndarray:
    hr = 2 if series.plane == "sagittal" else 1
    depths = (-series.thickness / 3, 0.0, series.thickness / 3) if series.plane == "sagittal" else (0.0,)
    signal = tissue_signal(series.sequence, rng)
    m = series.matrix * hr
    sens = coil((m, m), rng)
    out = np.empty((series.slices, size, size), np.float32)
    sigma = None
    for k in range(series.slices):
        s = np.zeros((m, m), np.float32)
        grain = texture((m, m), m / series.fov, rng)  # 1 mm grain
        for depth in depths:
            x, y, z = slice_points(series, k, depth, hr)
            cv = Canvas((-x if subj.mirror else x, y, z))
            paint_knee(cv, subj)
            s += np.take(signal, cv.labels) * (1 + grain * np.take(TEXTURE, cv.labels))
        s *= sens / len(depths)
        if sigma is None:
            fg = s[s > 0.1 * s.max()]
            sigma = float(fg.mean()) / series.snr if fg.size else 0.01
        out[k] = kspace(s, series.matrix, size, sigma, series.ghost, rng)
    return out


def store(mag: np.ndarray, series: Series, rng: np.random.Generator) -> np.ndarray:
    top = 255 if series.storage == "uint8" else 4095
    ref = np.percentile(mag[:, ::3, ::3], 99.5) * _u(rng, 0.95, 1.15)
    out = np.rint(np.clip(mag / max(ref, 1e-6), 0, 1) * top).astype(np.uint8 if top == 255 else np.uint16)
    return out[::-1].copy() if series.reversed else out


def acl_voxel(subj: Subject, series: Series, size: int) -> tuple[float, float, float]:
    """(slice, row, col) of the ACL's midpoint in the stored series (the localiser's ground truth)."""
    fem, tib = acl_ends(subj.shape)
    mid = (fem + tib) / 2
    if subj.mirror:
        mid[0] = -mid[0]
    normal, row, col = series.axes()
    d = mid - np.asarray(series.centre)
    k = float(d @ normal) / series.spacing + (series.slices - 1) / 2
    if series.reversed:
        k = series.slices - 1 - k
    px = series.fov / size
    return k, float(d @ row) / px + (size - 1) / 2, float(d @ col) / px + (size - 1) / 2


def render_case(seed: int, case: int, split: str, labels: Labels, size: int) -> tuple[dict[str, np.ndarray], dict]:
    """All three planes of one exam and its findings row; a function of (seed, case, labels, size) only (`split`
    kept for the generators' common call: MRNet's splits differ in slice counts, this phantom draws them alike)."""
    rng = np.random.default_rng([seed, case, 2])
    subj = draw_subject(rng, labels.acl, labels.meniscus, labels.abnormal)
    volumes, sag = {}, None
    for plane, r in zip(PLANES, rng.spawn(len(PLANES)), strict=True):
        series = draw_series(plane, r, size)
        volumes[plane] = store(render_series(subj, series, size, r), series, r)
        sag = series if plane == "sagittal" else sag
    f = subj.findings
    k, row, col = acl_voxel(subj, sag, size)
    return volumes, {
        "case": f"{case:04d}", "acl_tear": f["acl"], "acl_mimic": f.get("mimic", "none"),
        "bone_bruise": int(f["bruise"]),
        "meniscus_tear": f["men"], "effusion_mm": round(f["eff"], 2), "bone_lesion": int("lesion" in f),
        "cartilage_defect": int("cartilage_defect" in f), "baker_cyst_mm": round(f.get("baker", 0.0), 2),
        "left": int(subj.mirror), "sag_sequence": sag.sequence, "sag_slices": sag.slices, "sag_matrix": sag.matrix,
        "sag_snr": round(sag.snr, 2), "sag_storage": sag.storage, "acl_slice": round(k, 2),
        "acl_row": round(row, 2), "acl_col": round(col, 2)}


def gallery(path: Path, pairs: int = 4, seed: int = 0, size: int = 256) -> Path:
    """Rows of sagittal slices through the ACL's midpoint (marked): intact (left) beside torn (right)."""
    from sbssl.synth.exam import Labels
    from sbssl.synth.gallery import save_mosaic
    from sbssl.utils.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(pairs, 2, figsize=(6, 3 * pairs), squeeze=False)
    for i in range(pairs):
        for j, labels in enumerate((Labels(0, 0, 0), Labels(1, 1, 0))):
            volumes, row = render_case(seed, 10_000 + 2 * i + j, "train", labels, size)
            sag = volumes["sagittal"]
            k = int(np.clip(round(row["acl_slice"]), 0, len(sag) - 1))
            ax = axes[i, j]
            ax.imshow(sag[k], cmap="gray", vmin=0, vmax=255 if sag.dtype == np.uint8 else 4095)
            ax.plot(row["acl_col"], row["acl_row"], "r+", ms=6)
            tear = row["acl_tear"] if row["acl_tear"] != "none" else f"intact ({row['acl_mimic']})"
            ax.set_title(f"ACL {tear}, {row['sag_sequence']}, slice {k}", fontsize=7)
            ax.axis("off")
    return save_mosaic(fig, path)
