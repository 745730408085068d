"""The procedural knee: per-exam anatomy, findings, and how they are painted.

Units are millimetres in a right-knee frame (x lateral, y posterior, z superior, joint
line at z = 0); a left knee is the mirror image. The tibia, fibula, menisci and the
tibial ends of ligaments live in a frame rotated by the knee's flexion.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sbssl.synth import geometry as g
from sbssl.synth.geometry import Canvas, Frame

# Tissue labels; their MR signal per sequence is in `appearance.py`.
AIR, SKIN, FAT, MUSCLE, FLUID, CARTILAGE, CORTEX, MARROW, LIGAMENT, DEGENERATE, EDEMA, LESION = range(12)
N_TISSUES = 12


@dataclass
class Findings:
    """What a radiologist would report; drives both the labels and the drawing."""

    acl_tear: bool = False
    acl_severity: float = 0.0  # 0 intact .. 1 absent; <0.4 partial, <0.85 complete, else chronic absence
    acl_degeneration: float = 0.0  # mucoid degeneration of an intact ACL: a mimic, not a tear
    bone_bruise: bool = False  # the pivot-shift pattern, secondary sign of an ACL tear
    meniscus_tear: bool = False
    meniscus_side: int = -1  # -1 medial, +1 lateral
    meniscus_tear_height: float = 0.5  # where the tear cuts the wedge, 0 base .. 1 rim
    meniscus_tear_tilt: float = 0.0  # 0 horizontal cleavage, larger = oblique
    meniscus_tear_extent: float = 0.8  # fraction of the wedge it crosses from the free edge
    meniscus_tear_width: float = 0.9  # mm of fluid signal in the tear
    acl_gap: int = FLUID  # what fills a complete tear's gap: fluid (acute) or granulation (DEGENERATE)
    effusion: float = 1.0  # suprapatellar fluid thickness, mm (about 1 is physiological)
    bone_lesion: tuple | None = None  # (centre, radii) in the femur or tibia
    cartilage_defect: tuple | None = None  # centre on the femoral condyle surface
    baker_cyst: float = 0.0  # radius in mm, 0 for none


@dataclass
class Knee:
    scale: float = 1.0
    flexion: float = 8.0  # degrees
    mirror: bool = False  # left knee
    leg_radius: tuple = (58.0, 54.0)
    fat: float = 9.0
    condyle: tuple = (14.0, 28.0, 24.0)
    plateau: tuple = (38.0, 26.0)
    patella_height: float = 30.0
    acl_radius: float = 4.2
    findings: Findings = field(default_factory=Findings)
    warp: g.Deformation | None = None  # a smooth deformation of the whole phantom (a family's anatomy knob)

    @property
    def tibia(self) -> Frame:
        return Frame(g.rotation_x(self.flexion), np.array([0.0, 6.0, 8.0], np.float32))


# Each subject's shape parameters: a uniform range per value of each Knee field, in the order they are drawn.
KNEE_RANGES: dict[str, list[tuple[float, float]]] = {
    "scale": [(0.88, 1.12)], "flexion": [(0.0, 20.0)], "leg_radius": [(52, 64), (48, 60)], "fat": [(4.0, 16.0)],
    "condyle": [(12.5, 15.5), (25, 30), (22, 26)], "plateau": [(35, 41), (24, 28)],
    "patella_height": [(24, 36)], "acl_radius": [(3.0, 4.0)],
}
FLOORS = {"fat": 2.0, "flexion": -5.0, "acl_radius": 1.8}  # where a widened range would stop being a knee


def sample_knee(rng: np.random.Generator, findings: Findings) -> Knee:
    """Random anatomy of one subject (size, build, flexion, side)."""
    def draw(name: str) -> float | tuple[float, ...]:
        v = tuple(float(rng.uniform(lo, hi)) for lo, hi in KNEE_RANGES[name])
        return v if len(v) > 1 else v[0]

    scale, flexion = draw("scale"), draw("flexion")
    mirror = bool(rng.random() < 0.5)
    shape = {name: draw(name) for name in KNEE_RANGES if name not in ("scale", "flexion")}
    return Knee(scale=scale, flexion=flexion, mirror=mirror, findings=findings, **shape)


def widen(k: Knee, spread: float) -> Knee:
    """The same subject with every shape parameter moved `spread` times as far from its range's centre: a
    family's wider population (spread 1: unchanged)."""
    if spread == 1.0:
        return k
    out = {}
    for name, ranges in KNEE_RANGES.items():
        value = getattr(k, name)
        vals = [value] if np.isscalar(value) else list(value)
        vals = [max((lo + hi) / 2 + spread * (v - (lo + hi) / 2), FLOORS.get(name, 0.0))
                for v, (lo, hi) in zip(vals, ranges, strict=True)]
        out[name] = vals[0] if np.isscalar(value) else tuple(vals)
    return replace(k, **out)


# ---------------------------------------------------------------- painting


def paint_knee(cv: Canvas, k: Knee) -> None:
    """Paint every structure of `k` in an order where later (smaller) ones win."""
    _soft_tissue(cv, k)
    _fluid(cv, k)
    _tibia_and_fibula(cv, k)
    _menisci(cv, k)
    _femur(cv, k)
    _patella_and_tendons(cv, k)
    _cruciates(cv, k)
    _collaterals(cv, k)
    _lesions(cv, k)


def _soft_tissue(cv: Canvas, k: Knee) -> None:
    rx, ry = k.leg_radius
    leg = g.cylinder_z(0.0, 6.0, rx, ry, -200, 200)
    cv.paint((-rx - 1, 6 - ry - 1, -200), (rx + 1, 6 + ry + 1, 200), leg,
             [(0.0, SKIN), (-1.5, FAT), (-k.fat, MUSCLE)])
    # Joint fat (Hoffa's pad in front, popliteal fat behind) replaces muscle at the joint.
    jf = g.ellipsoid((0, 2, 4), (rx - k.fat - 4, ry - 2, 34))
    cv.paint((-rx, -ry, -32), (rx, ry + 6, 40), jf, [(0.0, FAT)])
    for side in (-1, 1):  # gastrocnemius heads
        gm = g.ellipsoid((side * 20, 36, -48), (19, 17, 46))
        cv.paint((side * 20 - 20, 18, -95), (side * 20 + 20, 54, 0), gm, [(0.0, MUSCLE)])
    # Popliteal artery and vein: bright (slow flow) round structures behind the joint.
    vessel = g.cylinder_z(-4, 28, 4.0, 4.0, -60, 60)
    cv.paint((-9, 23, -60), (1, 33, 60), vessel, [(0.0, FLUID)])


def _fluid(cv: Canvas, k: Knee) -> None:
    f = k.findings
    e = f.effusion
    ph = k.patella_height
    pouch = g.ellipsoid((0, -24 + e / 3, ph + 18), (24 + e, 1.5 + e, 18 + e))
    cv.paint((-26 - e, -28 - e, ph - 4 - e), (26 + e, -20 + e, ph + 40 + e), pouch, [(0.0, FLUID)])
    if e > 3:  # posterior recess fills too
        rec = g.ellipsoid((0, 22, 10), (30, 2 + e / 3, 14))
        cv.paint((-31, 18 - e, -5), (31, 27 + e, 25), rec, [(0.0, FLUID)])
    if f.baker_cyst > 0:
        r = f.baker_cyst
        cy = g.ellipsoid((-18, 40, -8), (r * 0.8, r * 0.6, r * 1.4))
        cv.paint((-18 - r, 40 - r, -8 - 1.5 * r), (-18 + r, 40 + r, -8 + 1.5 * r), cy, [(0.0, FLUID)])


def _femur_sdf(k: Knee):
    cx, cy, cz = k.condyle
    return g.union(
        g.ellipsoid((-20, 2, cz + 3), (cx, cy, cz)),
        g.ellipsoid((20, 2, cz + 3), (cx, cy, cz)),
        g.ellipsoid((0, -10, cz + 16), (30, 18, 16)),  # trochlea joining the condyles in front
        g.ellipsoid((0, -2, cz + 34), (30, 20, 30)),  # metaphyseal flare
        g.cylinder_z(0, -2, 14, 13, cz + 30, 220),  # shaft
        blend=10.0,
    )


def _femur(cv: Canvas, k: Knee) -> None:
    sdf = _femur_sdf(k)
    distal = k.condyle[2] + 30
    lo, hi = (-50, -40, -2), (50, 40, 220)
    cv.paint(lo, (50, 40, distal - 6), sdf, [(2.5, CARTILAGE)], where=lambda p: p[2] < distal - 6)
    cv.paint(lo, hi, sdf, [(0.0, CORTEX), (-1.8, MARROW)])
    d = k.findings.cartilage_defect
    if d is not None:  # a focal full-thickness defect filled with joint fluid
        cv.paint(np.subtract(d, 7), np.add(d, 7), g.ellipsoid(d, (6, 6, 6)), [(0.0, FLUID)],
                 where=lambda p: (sdf(p) > -0.5) & (sdf(p) < 2.5))


def _tibia_sdf(k: Knee):
    px, py = k.plateau
    body = g.union(
        g.intersect(g.ellipsoid((0, 2, -3), (px, py, 24)), g.halfspace_z(-3.0)),
        g.cylinder_z(0, 2, 14, 13, -220, -30),
        g.ellipsoid((0, -14, -36), (12, 15, 16)),  # tibial tuberosity
        blend=12.0,
    )
    return g.union(body, g.ellipsoid((0, -4, -3), (7, 6, 4.5)))  # tibial spines


def _tibia_and_fibula(cv: Canvas, k: Knee) -> None:
    t = k.tibia
    sdf = t.wrap(_tibia_sdf(k))
    lo, hi = t.world_box((-45, -35, -220), (45, 35, 5))
    cv.paint(*t.world_box((-45, -35, -6), (45, 35, 5)), sdf, [(2.5, CARTILAGE)],
             where=lambda p: t.to_local(p)[2] > -6)
    cv.paint(lo, hi, sdf, [(0.0, CORTEX), (-1.8, MARROW)])
    fib = t.wrap(g.union(g.ellipsoid((31, 16, -26), (8, 8, 9)), g.cylinder_z(31, 16, 6.5, 6.5, -220, -26)))
    lo, hi = t.world_box((20, 5, -220), (42, 27, -14))
    cv.paint(lo, hi, fib, [(0.0, CORTEX), (-1.5, MARROW)])


def _meniscus_mask(side: int, local: np.ndarray, k: Knee, tear: bool) -> np.ndarray:
    """A C-shaped wedge on the tibial plateau (or, with tear=True, the tear inside it)."""
    f = k.findings
    cx = side * 19.0
    rx, ry = (15.0, 20.0) if side < 0 else (14.0, 16.0)
    width = 9.0
    dx, dy = local[0] - cx, local[1] - 1.0
    q = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    q_in = 1.0 - width / ry
    base = -0.5
    h = 6.0 * np.clip((q - q_in) / (1.0 - q_in), 0.0, 1.0)
    z = local[2] - base
    inside = (q < 1.0) & (q > q_in) & (z > 0) & (z < h)
    # open toward the notch: wide for the medial C, narrow for the lateral near-O
    towards_notch = -side * dx / np.maximum(np.hypot(dx, dy), 1e-3)
    inside &= towards_notch < (0.72 if side < 0 else 0.9)
    if not tear:
        return inside
    rel = np.clip((q - q_in) / (1.0 - q_in), 0.0, 1.0)
    surface = 6.0 * rel * (f.meniscus_tear_height + f.meniscus_tear_tilt * (rel - 0.5))
    posterior = dy > 0.3 * np.abs(dx)
    return inside & posterior & (np.abs(z - surface) < f.meniscus_tear_width / 2) & (
        rel < f.meniscus_tear_extent)


def _menisci(cv: Canvas, k: Knee) -> None:
    t, f = k.tibia, k.findings
    for side in (-1, 1):
        lo, hi = t.world_box((side * 19 - 17, -22, -1), (side * 19 + 17, 24, 7))
        cv.paint(lo, hi, lambda p, s=side: np.where(_meniscus_mask(s, t.to_local(p), k, False), -1.0, 1.0),
                 [(0.0, LIGAMENT)])
        if f.meniscus_tear and f.meniscus_side == side:
            cv.paint(lo, hi, lambda p, s=side: np.where(_meniscus_mask(s, t.to_local(p), k, True), -1.0, 1.0),
                     [(0.0, FLUID)])


def _patella_and_tendons(cv: Canvas, k: Knee) -> None:
    ph = k.patella_height
    pat = g.ellipsoid((0, -44, ph), (21, 9, 20))
    cv.paint((-24, -56, ph - 23), (24, -32, ph + 23), pat, [(2.5, CARTILAGE)], where=lambda p: p[1] > -42)
    cv.paint((-24, -56, ph - 23), (24, -32, ph + 23), pat, [(0.0, CORTEX), (-1.6, MARROW)])
    t = k.tibia
    a, b = np.array([0, -47, ph - 18]), t.to_world((0, -27, -38))
    tendon = g.capsule(a, b, 3.5)
    cv.paint(np.minimum(a, b) - 5, np.maximum(a, b) + 5,
             lambda p: np.maximum(tendon(p), np.abs(p[0]) - 13), [(0.0, LIGAMENT)])
    quad = g.capsule((0, -47, ph + 18), (0, -36, ph + 90), 3.8)
    cv.paint((-14, -52, ph + 12), (14, -31, ph + 95),
             lambda p: np.maximum(quad(p), np.abs(p[0]) - 14), [(0.0, LIGAMENT)])


def acl_ends(k: Knee) -> tuple[np.ndarray, np.ndarray]:
    """The ACL's femoral end (high in the notch on the lateral condyle) and tibial end (in front of the spines),
    in the right-knee frame the phantom is drawn in."""
    return np.array([8.0, 14.0, 21.0]), k.tibia.to_world((2.0, -10.0, -2.0))


def _cruciates(cv: Canvas, k: Knee) -> None:
    t, f = k.tibia, k.findings
    # PCL: thick, curved, dark; femoral end on the medial condyle's wall, tibial end posterior.
    p0, pm, p1 = np.array([-7, -2, 24.0]), np.array([-4, 15, 19.0]), t.to_world((-1, 22, -12))
    pcl = g.union(g.capsule(p0, pm, 5.2), g.capsule(pm, p1, 5.2))
    cv.paint(np.minimum(p0, p1) - 8, np.maximum(p0, p1) + 8, pcl, [(0.0, LIGAMENT)])
    # ACL: femoral end high in the notch on the lateral condyle, tibial end in front of the spines.
    fem, tib = acl_ends(k)
    r = k.acl_radius
    lo, hi = np.minimum(fem, tib) - 12, np.maximum(fem, tib) + 12
    sheath = g.capsule(fem, tib, r + 0.6)  # thin synovial lining outlining the ligament
    cv.paint(lo, hi, sheath, [(0.0, DEGENERATE)])
    if not f.acl_tear:
        cv.paint(lo, hi, g.capsule(fem, tib, r), [(0.0, LIGAMENT)])
        if f.acl_degeneration > 0:  # mucoid degeneration: intermediate signal inside intact fibres
            cv.paint(lo, hi, g.capsule(fem + 0.25 * (tib - fem), tib - 0.2 * (tib - fem),
                                       r * 0.5 * f.acl_degeneration), [(0.0, DEGENERATE)])
        return
    s = f.acl_severity
    axis = tib - fem
    if s < 0.4:  # partial tear: thickened, continuous, abnormal intrinsic signal over a segment
        cv.paint(lo, hi, g.capsule(fem, tib, r * (1.1 + 0.5 * s)), [(0.0, LIGAMENT)])
        a, b = fem + (0.5 - s) * axis, fem + (0.5 + s) * axis
        cv.paint(lo, hi, g.capsule(a, b, r * (0.5 + s)), [(0.0, DEGENERATE)])
    elif s < 0.85:  # complete mid-substance tear: gap with fluid, lax sagging distal stump
        t0 = 0.35 + 0.3 * (s - 0.4) / 0.45
        gap = (0.12 + 0.25 * s) * np.linalg.norm(axis)
        centre = fem + t0 * axis
        u = axis / np.linalg.norm(axis)
        cv.paint(lo, hi, g.ellipsoid(centre, (r + 3, gap / 2 + 3, gap / 2 + 3)), [(0.0, f.acl_gap)])
        cv.paint(lo, hi, g.capsule(fem, centre - u * gap / 2, r), [(0.0, LIGAMENT)])
        sag = np.array([0.0, 0.5 + s, -0.6 - s]) * gap  # distal stump falls posteriorly and flat
        cv.paint(lo, hi, g.capsule(centre + u * gap / 2 + sag, tib, r * 1.15), [(0.0, DEGENERATE), (-1.2, LIGAMENT)])
    else:  # chronic absence: empty notch, a nubbin of stump at the tibia
        cv.paint(lo, hi, g.capsule(fem, tib, r + 1.0), [(0.0, FAT)])
        cv.paint(lo, hi, g.capsule(tib - 0.15 * axis, tib, r), [(0.0, LIGAMENT)])


def _collaterals(cv: Canvas, k: Knee) -> None:
    t = k.tibia
    cz = k.condyle[2]
    a, b = np.array([-36.0, 2.0, cz + 18]), t.to_world((-38.0, 0.0, -55.0))
    mcl = g.capsule(a, b, 2.0)
    cv.paint(np.minimum(a, b) - 4, np.maximum(a, b) + 4, mcl, [(0.0, LIGAMENT)])
    a, b = np.array([36.0, 6.0, cz + 14]), t.to_world((33.0, 14.0, -20.0))
    lcl = g.capsule(a, b, 2.2)
    cv.paint(np.minimum(a, b) - 4, np.maximum(a, b) + 4, lcl, [(0.0, LIGAMENT)])


def _lesions(cv: Canvas, k: Knee) -> None:
    f, t = k.findings, k.tibia
    fem_in = lambda p: _femur_sdf(k)(p) < -1.8  # noqa: E731
    tib_in = lambda p: t.wrap(_tibia_sdf(k))(p) < -1.8  # noqa: E731
    if f.bone_bruise:  # lateral femoral condyle and posterolateral tibial plateau
        c = np.array([20.0, -4.0, 9.0])
        cv.paint(c - 14, c + 14, g.ellipsoid(c, (10, 12, 7)), [(0.0, EDEMA)], where=fem_in)
        c = t.to_world((22.0, 14.0, -9.0))
        cv.paint(c - 14, c + 14, g.ellipsoid(c, (10, 9, 6)), [(0.0, EDEMA)], where=tib_in)
    if f.bone_lesion is not None:
        c, r = np.asarray(f.bone_lesion[0], np.float32), np.asarray(f.bone_lesion[1], np.float32)
        in_tibia = c[2] < 0
        if in_tibia:
            c = t.to_world(c)
        cv.paint(c - r - 3, c + r + 3, g.ellipsoid(c, r), [(1.5, EDEMA), (0.0, LESION)],
                 where=tib_in if in_tibia else fem_in)
