"""Randomised synthetic families: the same knees, acquired the many ways scanners and sites acquire them.

A model that is to work on a hospital's knees must not depend on what differs between scanners: the sequence's
contrast, field of view and knee size, position and tilt in the field, slice count and spacing, matrix, coil
shading, noise, motion, how intensities are stored, which knee and in which slice order. SynthSeg (Billot et al.
2023) trains brain-MRI models that work on every scanner by drawing each of these per image from a wide range;
a family here is such a set of ranges, drawn per exam. The findings (and so the labels) are drawn as the demo's
(`exam.sample_findings`); the subject is the demo's anatomy model, which a family may widen, deform smoothly
and draw tears of another filling in (`vary_anatomy`), and the renderer's blur and grain may vary.

`FAMILIES` names the families. `demo` is the generator the demo, the shipped encoder and earlier recipes were
made on (its bytes are unchanged: `exam.render_exam` without a family). Choices are made on selection families
(`clinic`, `mixed`, `varied`); `shifted` and `morphed` are held out, fixed before any result was seen, with
knobs partly outside the selection ranges (`shifted`: more off-centre and rotated, smaller and larger knees,
lower SNR, finer matrices, 12-bit; `morphed`: wider shapes, stronger deformation, more granulation, blur, grain).

TorchIO does the artefacts it already models (k-space motion, ghosting, polynomial bias field); gamma is one
power on the stored scale, and the Rician noise stays ours (TorchIO's noise is additive Gaussian, MR
magnitude noise is Rician).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from sbssl.synth.anatomy import DEGENERATE, N_TISSUES, Knee, paint_knee, widen
from sbssl.synth.appearance import SIGNAL, TEXTURE, rician, smooth_field
from sbssl.synth.geometry import PLANE_AXES, PLANE_CENTRE, Canvas, Deformation, SliceGrid, fine_grid, supersampling

Range = tuple[float, float]
STORAGE = {"uint8": (np.uint8, 255), "uint12": (np.uint16, 4095)}  # MRNet: 8-bit; KneeMRI: 12-bit in 16


@dataclass(frozen=True)
class Family:
    """Per-exam ranges of every acquisition knob; each exam draws one value of each (uniformly)."""

    name: str
    sequences: tuple[str, ...]  # contrasts drawn per series (appearance.SIGNAL keys)
    tissue_jitter: float  # each tissue's signal scaled by U(1 - j, 1 + j): contrast between tissues moves
    log_gamma: Range  # intensity non-linearity x ** exp(U(lo, hi)) on the stored scale
    fill: Range  # the limb's diameter as a fraction of the field of view (knee size in the image)
    offset: float  # knee centre off the field centre, up to this fraction of the field, per in-plane axis
    rotation: float  # in-plane tilt, up to +- degrees
    slices: tuple[int, int]  # slice count per series
    spacing: Range  # slice spacing in mm (slice thickness = spacing: contiguous slices)
    matrix: tuple[int, int]  # native in-plane matrix at 256 px storage (scaled with --size); resampled to it
    bias: Range  # polynomial (order 3) bias-field coefficient magnitude
    snr: Range  # mean foreground signal / noise sigma
    motion: float  # probability of rigid motion during the acquisition (k-space mixing)
    ghosting: float  # probability of ghosts along the phase-encoding axis
    storage: tuple[str, ...]  # STORAGE keys, drawn per exam
    reverse: float  # probability that the slices are stored in the opposite order
    # The subject, not the scanner (defaults: the demo's anatomy model as it is). A model that is to work on
    # knees it never saw must not depend on one phantom's shapes or on one way of drawing a tear.
    anatomy: float = 1.0  # every shape parameter `anatomy` times as far from its range's centre (anatomy.widen)
    warp: Range = (0.0, 0.0)  # amplitude (mm) of a smooth random deformation of the whole knee
    granulation: float = 0.0  # probability that a complete ACL tear's gap holds granulation, not fluid
    blur: Range = (0.0, 0.0)  # in-plane point-spread (Gaussian sigma, native pixels)
    texture: Range = (1.0, 1.0)  # scale of each tissue's texture (the renderer's grain)

    def describe(self) -> dict:
        return asdict(self)


FAMILIES: dict[str, Family | None] = {
    "demo": None,  # exam.render_exam's own acquisition (MRNet-like T2 fat-sat sagittal, centred, 8-bit)
    "clinic": Family("clinic", ("pd", "pdfs"), 0.10, (-0.15, 0.15), (0.55, 0.85), 0.10, 8.0, (20, 40),
                     (3.0, 4.0), (256, 320), (0.1, 0.3), (12.0, 30.0), 0.15, 0.15, ("uint8",), 0.5),
    "mixed": Family("mixed", ("pd", "pdfs", "t2fs", "t1"), 0.15, (-0.3, 0.3), (0.45, 0.85), 0.15, 12.0, (18, 50),
                    (2.5, 4.5), (192, 320), (0.1, 0.5), (8.0, 30.0), 0.25, 0.25, ("uint8", "uint12"), 0.5),
    # mixed's scanners, and other subjects: wider shapes, a smooth deformation, granulation in tears, blur, grain
    "varied": Family("varied", ("pd", "pdfs", "t2fs", "t1"), 0.15, (-0.3, 0.3), (0.45, 0.85), 0.15, 12.0,
                     (18, 50), (2.5, 4.5), (192, 320), (0.1, 0.5), (8.0, 30.0), 0.25, 0.25, ("uint8", "uint12"),
                     0.5, anatomy=1.8, warp=(2.0, 8.0), granulation=0.4, blur=(0.0, 1.2), texture=(0.5, 2.0)),
    # held out: outside the selection ranges in offset, rotation, knee size, SNR, matrix; 12-bit only
    "shifted": Family("shifted", ("pdfs", "t2fs"), 0.15, (-0.4, 0.4), (0.40, 0.90), 0.20, 15.0, (18, 50),
                      (2.5, 4.5), (288, 384), (0.2, 0.6), (6.0, 20.0), 0.3, 0.3, ("uint12",), 0.5),
    # held out, fixed before any result: other subjects beyond varied's ranges (shapes, deformation, tear
    # filling, blur, grain), acquired as a clinic would (PD / T2 fat-sat, 8-bit)
    "morphed": Family("morphed", ("pd", "t2fs"), 0.20, (-0.2, 0.2), (0.50, 0.85), 0.12, 10.0, (20, 40),
                      (3.0, 4.0), (256, 320), (0.1, 0.4), (10.0, 25.0), 0.2, 0.2, ("uint8",), 0.5,
                      anatomy=2.2, warp=(6.0, 12.0), granulation=0.6, blur=(0.5, 1.6), texture=(0.3, 2.5)),
}
SELECTION_FAMILIES = ("clinic", "mixed", "varied")
HELD_OUT_FAMILIES = ("shifted", "morphed")


def mix_member(mix: str, case: int) -> str:
    """The family of case `case` in a mix "a,b,...": the families in turn (balanced in every split; each exam is
    the one its family alone draws at that seed and case)."""
    names = mix.split(",")
    return names[case % len(names)]


def family(name: str) -> Family | None:
    """The named family (None: the demo's generator); one clear line for an unknown name."""
    if name not in FAMILIES:
        raise ValueError(f"unknown synthetic family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


@dataclass(frozen=True)
class Acquisition:
    """One series' drawn knobs (what the findings CSV records beside the ground truth)."""

    sequence: str
    gamma: float
    fill: float
    offset_rows: float
    offset_cols: float
    rotation: float
    slices: int
    spacing: float
    matrix: int
    snr: float
    motion: bool
    ghosting: bool
    storage: str
    reversed: bool
    blur: float = 0.0
    texture: float = 1.0


def draw_acquisition(fam: Family, rng: np.random.Generator, size: int) -> Acquisition:
    u = rng.uniform
    lo, hi = (max(16, round(m * size / 256)) for m in fam.matrix)
    return Acquisition(
        sequence=str(rng.choice(fam.sequences)), gamma=float(np.exp(u(*fam.log_gamma))), fill=float(u(*fam.fill)),
        offset_rows=float(u(-fam.offset, fam.offset)), offset_cols=float(u(-fam.offset, fam.offset)),
        rotation=float(u(-fam.rotation, fam.rotation)), slices=int(rng.integers(fam.slices[0], fam.slices[1] + 1)),
        spacing=float(u(*fam.spacing)), matrix=int(rng.integers(lo, hi + 1)), snr=float(u(*fam.snr)),
        motion=bool(rng.random() < fam.motion), ghosting=bool(rng.random() < fam.ghosting),
        storage=str(rng.choice(fam.storage)), reversed=bool(rng.random() < fam.reverse),
        **_renderer(fam, rng))


def _renderer(fam: Family, rng: np.random.Generator) -> dict[str, float]:
    """The renderer's knobs, drawn only where the family sets them (earlier families' exams stay as they were)."""
    out = {}
    if fam.blur != (0.0, 0.0):
        out["blur"] = float(rng.uniform(*fam.blur))
    if fam.texture != (1.0, 1.0):
        out["texture"] = float(rng.uniform(*fam.texture))
    return out


def vary_anatomy(knee: Knee, fam: Family, rng: np.random.Generator) -> Knee:
    """The family's subject: the knee's shapes widened, a smooth deformation, and what fills a complete tear."""
    knee = widen(knee, fam.anatomy)
    if fam.warp != (0.0, 0.0):
        knee = replace(knee, warp=Deformation.draw(rng, float(rng.uniform(*fam.warp))))
    f = knee.findings
    if f.acl_tear and 0.4 <= f.acl_severity < 0.85 and rng.random() < fam.granulation:
        knee = replace(knee, findings=replace(f, acl_gap=DEGENERATE))
    return knee


def subject_row(knee: Knee) -> dict[str, object]:
    """What `vary_anatomy` drew, for the findings CSV: the deformation's bound and a complete tear's filling."""
    return {"warp_mm": round(knee.warp.reach, 2) if knee.warp is not None else 0.0,
            "acl_gap": "granulation" if knee.findings.acl_gap == DEGENERATE else "fluid"}


def acquisition_grid(plane: str, knee: Knee, acq: Acquisition, rng: np.random.Generator) -> SliceGrid:
    """The series' sampling grid at its native matrix: the limb's diameter fills `acq.fill` of the field, the
    field centre is moved off the knee by the drawn fractions, the plane tilted in-plane."""
    normal, row, col = (np.array(v, np.float64) for v in PLANE_AXES[plane])
    a = np.deg2rad(acq.rotation)
    row, col = np.cos(a) * row + np.sin(a) * col, -np.sin(a) * row + np.cos(a) * col
    fov = 2.0 * max(knee.leg_radius) * knee.scale / acq.fill
    m, n = acq.matrix, acq.slices
    centre = np.array(PLANE_CENTRE[plane]) + rng.uniform(-6, 6) * normal
    centre = centre - fov * (acq.offset_rows * row + acq.offset_cols * col)  # the knee moves the other way
    axes = np.stack([normal * acq.spacing, row * fov / m, col * fov / m], 1) / knee.scale
    origin = centre / knee.scale - axes @ (np.array([n, m, m]) - 1) / 2
    return SliceGrid(origin=origin, axes=axes, shape=(n, m, m))


def _tio_image(x: np.ndarray, spacing: float, px: float):
    import torchio as tio

    return tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(x))[None],
                           affine=np.diag([spacing, px, px, 1.0]))


def bias_field(shape: tuple[int, int, int], coefficients: list[float], coarse: int = 16) -> np.ndarray:
    """TorchIO's order-3 polynomial bias field, evaluated on a coarse in-plane grid and upsampled: the field is
    smooth, and evaluating the polynomial at every voxel was most of a series' rendering time."""
    import torchio as tio

    ones = _tio_image(np.ones((shape[0], coarse, coarse), np.float32), 1.0, 1.0)
    field = tio.BiasField(coefficients, order=3)(ones).data[0][:, None].float()
    return F.interpolate(field, size=shape[1:], mode="bilinear", align_corners=True)[:, 0].numpy()


def scanner_artefacts(s: np.ndarray, acq: Acquisition, fam: Family, px: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Bias field, motion and ghosting (TorchIO's deterministic transforms, parameters drawn from `rng` so an
    exam stays a function of its seed) on the noise-free signal (S, H, W)."""
    import torchio as tio

    s = s * bias_field(s.shape, (rng.uniform(-1, 1, 20) * rng.uniform(*fam.bias)).tolist())
    img = _tio_image(s, acq.spacing, px)
    if acq.motion:
        k = int(rng.integers(1, 3))
        img = tio.Motion(degrees=rng.uniform(-3, 3, (k, 3)), translation=rng.uniform(-3, 3, (k, 3)),
                         times=np.sort(rng.uniform(0.3, 0.9, k)), image_interpolation="linear")(img)
    if acq.ghosting:
        img = tio.Ghosting(num_ghosts=int(rng.integers(2, 8)), axis=int(rng.integers(1, 3)),
                           intensity=float(rng.uniform(0.2, 0.6)), restore=0.02)(img)
    return np.abs(img.data[0].numpy()).astype(np.float32)


def resample_to(vol: np.ndarray, size: int) -> np.ndarray:
    """Native matrix -> stored size in-plane (antialiased bilinear), as scanners' reconstructions are stored."""
    if vol.shape[1] == size:
        return vol
    t = torch.from_numpy(np.ascontiguousarray(vol))[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[:, 0].numpy()


def store(mag: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Scale to the storage type's range (the brightest 0.3% saturating), with the drawn gamma."""
    dtype, top = STORAGE[acq.storage]
    ref = np.percentile(mag[:, ::4, ::4], 99.7) * rng.uniform(0.95, 1.1)
    x = np.clip(mag / max(ref, 1e-6), 0.0, 1.0) ** acq.gamma
    out = np.rint(x * top).astype(dtype)
    return out[::-1].copy() if acq.reversed else out


@contextmanager
def one_thread():
    """BLAS, OpenMP and torch on one thread: larger products round differently on more, and an exam's bytes
    must not depend on the machine (`sbssl synth`'s worker processes run one thread each anyway)."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(n)


def render_series(knee: Knee, plane: str, fam: Family, size: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, SliceGrid, Acquisition]:
    """One series of a family: (stored volume, its grid at the stored size, the drawn knobs)."""
    acq = draw_acquisition(fam, rng, size)
    grid = acquisition_grid(plane, knee, acq, rng)
    ss = supersampling(acq.matrix)
    canvas = Canvas(fine_grid(grid, ss), mirror_x=knee.mirror, warp=knee.warp)
    paint_knee(canvas, knee)
    signal = SIGNAL[acq.sequence] * rng.uniform(1 - fam.tissue_jitter, 1 + fam.tissue_jitter, N_TISSUES)
    s = np.take(signal.astype(np.float32), canvas.labels)
    tex = smooth_field(canvas.labels.shape, max(canvas.labels.shape[1] // (6 * ss), 4), rng)
    s *= 1.0 + tex * np.take(TEXTURE * np.float32(acq.texture), canvas.labels)
    if ss > 1:
        n, h, w = s.shape
        s = s.reshape(n, h // ss, ss, w // ss, ss).mean((2, 4))
    if acq.blur > 0:
        s = gaussian_filter(s, sigma=(0.0, acq.blur, acq.blur), mode="nearest")
    px = float(np.linalg.norm(grid.axes[:, 1]) * knee.scale)
    s = scanner_artefacts(s, acq, fam, px, rng)
    fg = s[s > 0.05 * s.max()]
    sigma = float(fg.mean() if fg.size else 1.0) / acq.snr
    mag = resample_to(rician(s, sigma, rng), size)
    return store(mag, acq, rng), stored_grid(grid, size, acq.reversed), acq


def stored_grid(native: SliceGrid, size: int, reversed_: bool) -> SliceGrid:
    """The grid of the stored volume: pixel centres of the resampled matrix, slices in stored order."""
    n, m, _ = native.shape
    k = m / size
    axes = native.axes * np.array([1.0, k, k])
    origin = native.origin + (0.5 * k - 0.5) * (native.axes[:, 1] + native.axes[:, 2])
    if reversed_:
        origin, axes = origin + axes[:, 0] * (n - 1), axes * np.array([-1.0, 1.0, 1.0])
    return SliceGrid(origin=origin, axes=axes, shape=(n, size, size))
