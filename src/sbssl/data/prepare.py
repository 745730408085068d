"""Preparation of one volume, as training saw it: the region of interest, a robust intensity scaling and an
antialiased resize to the model's input size, in numpy alone (an exported model scores without torch).
The slice cache (data/cache.py) stores what this returns; `Preprocessing.prepare` applies it to new exams.
"""

from __future__ import annotations

import numpy as np

from sbssl.data.localise import knee_region

Box = tuple[int, int, int, int, int, int]  # x, y, z, height, width, depth


def roi(vol: np.ndarray, crop: float = 1.0, slab: float = 1.0, box: Box | None = None,
        mode: str = "center") -> np.ndarray:
    """The region of interest: the central `slab` fraction of the stack and the central `crop` fraction of
    each side of the field. Knee pipelines centre-crop (MRNet solutions) because the cruciates and menisci sit
    in the middle of a knee series, while its edges hold look-alikes (vessels, recesses, effusion).
    `mode` knee (data.roi=knee): the region follows the knee instead of the field's centre (data/localise.py);
    acl: a square of `crop` x the field centred on the ACL a shipped localiser finds (data/acl_region.py).
    With an annotated `box` (KneeMRI's ROI around the cruciate), the region is the box's slices and the
    smallest square holding the box in-plane (square, so resizing keeps the aspect; shifted inside the field
    where the box lies at its edge); crop and slab then do not apply."""
    if box is not None:
        return box_roi(vol, box)
    if mode == "knee":
        return vol[knee_region(vol, crop, slab)]
    if mode == "acl":
        from sbssl.data.acl_region import acl_region  # it reads the scaling and resizing defined here

        return vol[acl_region(vol, crop, slab)]
    n, h, w = vol.shape
    if slab < 1.0:
        lo, hi = (1 - slab) / 2 * (n - 1), (1 + slab) / 2 * (n - 1)
        a, b = int(np.ceil(lo - 1e-6)), int(np.floor(hi + 1e-6))
        if b < a:  # a slab narrower than one slice spacing: the slice nearest the centre
            a = b = int(round((n - 1) / 2))
        vol = vol[a: b + 1]
    if crop < 1.0:
        ch, cw = max(1, round(crop * h)), max(1, round(crop * w))
        r, c = (h - ch) // 2, (w - cw) // 2
        vol = vol[:, r: r + ch, c: c + cw]
    return vol


def box_roi(vol: np.ndarray, box: Box) -> np.ndarray:
    x, y, z, bh, bw, depth = box
    n, h, w = vol.shape
    if z >= n or y >= h or x >= w:
        raise ValueError(f"ROI box {box} lies outside the volume of shape {vol.shape}")
    side = min(max(bh, bw), h, w)
    r = int(np.clip(y + bh // 2 - side // 2, 0, h - side))
    c = int(np.clip(x + bw // 2 - side // 2, 0, w - side))
    return vol[z: min(z + depth, n), r: r + side, c: c + side]


def robust_minmax(vol: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Per-volume intensity scaling to [0, 1], robust to a few hot or dead voxels."""
    v = np.asarray(vol, np.float32)
    sample = v[:, ::2, ::2] if v.shape[1] > 64 else v
    lo, hi = np.percentile(sample, [lo_pct, hi_pct])
    if hi <= lo:
        return np.zeros_like(v)
    return np.clip((v - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0, dtype=np.float32)


def antialias_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of antialiased bilinear resampling with half-pixel centres: a triangle filter
    widened by the reduction factor, each row normalised (PIL's and torch's `antialias=True`, to 2e-7)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centre = (np.arange(n_out) + 0.5) * scale
    lo = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    j = np.arange(n_in)
    w = np.maximum(0.0, 1.0 - np.abs((j[None] - centre[:, None] + 0.5) / support))
    w *= (j[None] >= lo[:, None]) & (j[None] < hi[:, None])
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def resize_slices(vol01: np.ndarray, size: int) -> np.ndarray:
    """(S, H, W) in [0, 1] -> (S, size, size), antialiased bilinear: two small matrix products per slice, in
    numpy, so that an exported model's preparation needs no torch."""
    if vol01.shape[1:] == (size, size):
        return vol01
    wy, wx = antialias_weights(vol01.shape[1], size), antialias_weights(vol01.shape[2], size)
    return np.einsum("yh,shw,xw->syx", wy, np.asarray(vol01, np.float32), wx, optimize=True)


def prepare_volume(vol: np.ndarray, size: int, crop: float = 1.0, slab: float = 1.0,
                   box: Box | None = None, mode: str = "center") -> np.ndarray:
    """The exact preprocessing of training, for any volume (used by predict too)."""
    x = resize_slices(robust_minmax(roi(vol, crop, slab, box, mode)), size)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
