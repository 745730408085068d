"""Where the knee is in a series: a robust foreground box, so the region of interest follows the knee.

The central crop assumes the knee in the middle of the field; exams do not promise it (off-centre positioning,
small or large knees in the field). The limb is the one large bright body in a knee series, whatever the
sequence: smoothed over a few millimetres, even fat-suppressed fat and dark cortex sit well above the air's noise
floor. So: the stack's mean image at quarter resolution, smoothed, split from air by Otsu's threshold, its
largest connected component with holes filled; the box around it locates the knee in-plane, and the slices
whose in-box signal reaches half the brightest slice's locate it along the stack. Nothing here is learnt, so
nothing here can be fitted to one generator's look.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# A knee's limb fills about this fraction of a typical knee field of view (MRNet-like sagittal series: a limb
# of ~110 mm in a field of ~150 mm). With data.roi=knee the region's side is crop / KNEE_FILL limb diameters,
# so `crop` keeps its meaning (a fraction of a typical field) while the knee's own size sets the scale.
KNEE_FILL = 0.70


@dataclass(frozen=True)
class KneeBox:
    rows: tuple[float, float]  # foreground extent in pixels, [first, last + 1)
    cols: tuple[float, float]
    slices: tuple[int, int]  # the knee's slices, [first, last + 1)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.rows[0] + self.rows[1]) / 2, (self.cols[0] + self.cols[1]) / 2

    @property
    def diameter(self) -> float:
        """The limb's narrower extent: its diameter where it crosses the field, the knee's size where not."""
        return min(self.rows[1] - self.rows[0], self.cols[1] - self.cols[0])


def otsu_threshold(x: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold: the split of x's histogram that maximises the between-class variance."""
    hist, edges = np.histogram(x, bins=bins)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * mids)
    w1, total = 1.0 - w0, m0[-1]
    between = (total * w0 - m0) ** 2 / np.maximum(w0 * w1, 1e-12)
    return float(mids[int(np.argmax(between[:-1]))])


def knee_box(vol: np.ndarray, step: int = 4) -> KneeBox:
    """The knee's foreground box in a (slices, H, W) series of any dtype; the whole field where nothing
    stands out (an empty or constant series)."""
    n, h, w = vol.shape
    step = max(1, min(step, h // 16, w // 16))
    v = np.asarray(vol[:, ::step, ::step], np.float32)
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        return KneeBox((0.0, float(h)), (0.0, float(w)), (0, n))
    v = np.clip((v - lo) / (hi - lo), 0, 1)
    sigma = max(1.0, 8.0 / step)  # ~8 px of the stored image: a few mm
    mean = ndimage.gaussian_filter(v.mean(0), sigma)
    mask = mean > otsu_threshold(mean)
    lab, k = ndimage.label(mask)
    if k == 0:
        return KneeBox((0.0, float(h)), (0.0, float(w)), (0, n))
    mask = ndimage.binary_fill_holes(lab == 1 + int(np.argmax(ndimage.sum(mask, lab, range(1, k + 1)))))
    rr, cc = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    rows = (float(rr[0] * step), float(min((rr[-1] + 1) * step, h)))
    cols = (float(cc[0] * step), float(min((cc[-1] + 1) * step, w)))
    signal = (v * mask).sum((1, 2))
    on = np.flatnonzero(signal >= 0.5 * signal.max())
    return KneeBox(rows, cols, (int(on[0]), int(on[-1]) + 1))


def knee_region(vol: np.ndarray, crop: float, slab: float) -> tuple[slice, slice, slice]:
    """Index ranges of the region of interest that follows the knee: the central `slab` of the knee's slices
    and a square of side crop / KNEE_FILL limb diameters about the box centre (inside the field)."""
    box = knee_box(vol)
    side = round(crop / KNEE_FILL * box.diameter)
    return (knee_slab(box, slab),) + square_about(box.centre, side, vol.shape[1:])


def knee_slab(box: KneeBox, slab: float) -> slice:
    """The central `slab` fraction of the knee's slices."""
    a, b = box.slices
    keep = max(1, round(slab * (b - a)))
    s0 = a + (b - a - keep) // 2
    return slice(s0, s0 + keep)


def square_about(centre: tuple[float, float], side: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of a square of `side` pixels centred on `centre`, moved inside a field of `shape`."""
    h, w = shape
    side = int(np.clip(side, 1, min(h, w)))
    r0 = int(np.clip(round(centre[0] - side / 2), 0, h - side))
    c0 = int(np.clip(round(centre[1] - side / 2), 0, w - side))
    return slice(r0, r0 + side), slice(c0, c0 + side)
