"""Signed-distance primitives and the slice sampling grid of the knee phantom.

Every structure is a signed distance (negative inside, in millimetres) evaluated only
inside the index box its world bounding box maps to, so a volume costs roughly the
sum of the structures' sizes, not structures x volume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Points = np.ndarray  # (3, ...) world coordinates in mm: x lateral, y posterior, z superior
Sdf = Callable[[Points], np.ndarray]


def ellipsoid(c, r) -> Sdf:
    """Approximate signed distance to an axis-aligned ellipsoid (Quilez' bound)."""
    (cx, cy, cz), (rx, ry, rz) = (float(v) for v in c), (float(v) for v in r)

    def f(p: Points) -> np.ndarray:
        qx, qy, qz = (p[0] - cx) / rx, (p[1] - cy) / ry, (p[2] - cz) / rz
        k0 = np.sqrt(qx * qx + qy * qy + qz * qz)
        k1 = np.sqrt((qx / rx) ** 2 + (qy / ry) ** 2 + (qz / rz) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)

    return f


def capsule(a, b, radius: float) -> Sdf:
    """Distance to the segment a-b minus radius: a ligament or tendon."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    ab = b - a
    denom = float(ab @ ab)

    def f(p: Points) -> np.ndarray:
        shape = (3,) + (1,) * (p.ndim - 1)
        ap = p - a.reshape(shape)
        t = np.clip((ap * ab.reshape(shape)).sum(0) / denom, 0.0, 1.0)
        d = ap - t[None] * ab.reshape(shape)
        return np.sqrt((d * d).sum(0)) - radius

    return f


def cylinder_z(cx: float, cy: float, rx: float, ry: float, z0: float, z1: float) -> Sdf:
    """Elliptic cylinder along z between z0 and z1 (thigh, leg, bone shafts)."""

    def f(p: Points) -> np.ndarray:
        q = np.sqrt(((p[0] - cx) / rx) ** 2 + ((p[1] - cy) / ry) ** 2)
        radial = (q - 1.0) * min(rx, ry)
        axial = np.maximum(z0 - p[2], p[2] - z1)
        return np.maximum(radial, axial)

    return f


def union(*fs: Sdf, blend: float = 0.0) -> Sdf:
    """Union; with blend > 0 a smooth minimum, so bones flare organically into shafts."""

    def f(p: Points) -> np.ndarray:
        out = fs[0](p)
        for g in fs[1:]:
            d = g(p)
            if blend > 0:
                h = np.maximum(blend - np.abs(out - d), 0.0) / blend
                out = np.minimum(out, d) - h * h * (blend / 4)
            else:
                out = np.minimum(out, d)
        return out

    return f


def halfspace_z(z: float, below: bool = True) -> Sdf:
    return (lambda p: p[2] - z) if below else (lambda p: z - p[2])


def intersect(*fs: Sdf) -> Sdf:
    def f(p: Points) -> np.ndarray:
        out = fs[0](p)
        for g in fs[1:]:
            out = np.maximum(out, g(p))
        return out

    return f


def rotation_x(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)


@dataclass(frozen=True)
class Frame:
    """A rigid frame: local = R^T (world - pivot) + pivot. Used for the flexed tibia."""

    rot: np.ndarray
    pivot: np.ndarray

    def to_world(self, p_local) -> np.ndarray:
        p = np.asarray(p_local, np.float32)
        return self.rot @ (p - self.pivot) + self.pivot

    def to_local(self, p: Points) -> Points:
        shape = (3,) + (1,) * (p.ndim - 1)
        q = np.tensordot(self.rot.T, p - self.pivot.reshape(shape), axes=1)
        return q + self.pivot.reshape(shape)

    def wrap(self, f: Sdf) -> Sdf:
        return lambda p: f(self.to_local(p))

    def world_box(self, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1).T
        w = np.stack([self.to_world(c) for c in corners])
        return w.min(0), w.max(0)



@dataclass
class SliceGrid:
    """An MRI series as an affine map from (slice, row, col) indices to world mm."""

    origin: np.ndarray  # world position of index (0, 0, 0)
    axes: np.ndarray  # (3, 3): columns are world steps per slice, row, col
    shape: tuple[int, int, int]

    def index_box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index ranges that can contain the world box [lo, hi] (conservative)."""
        corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1)
        idx = np.linalg.solve(self.axes, corners - self.origin[:, None])
        out = []
        for k, n in enumerate(self.shape):
            a = max(int(np.floor(idx[k].min())) - 1, 0)
            b = min(int(np.ceil(idx[k].max())) + 2, n)
            if a >= b:
                return None
            out.append(slice(a, b))
        return tuple(out)

    def points(self, s: np.ndarray, r: np.ndarray, c: np.ndarray) -> Points:
        """World points of the outer product of (possibly fractional) index vectors."""
        return self.points_flat(s[:, None, None], r[None, :, None], c[None, None, :])

    def points_flat(self, s: np.ndarray, r: np.ndarray, c: np.ndarray) -> Points:
        """World points of index arrays that broadcast together."""
        ax = self.axes.astype(np.float32)
        o = self.origin.astype(np.float32)
        return np.stack([o[k] + ax[k, 0] * s + ax[k, 1] * r + ax[k, 2] * c for k in range(3)])

    @property
    def pixel_mm(self) -> float:
        return float(np.linalg.norm(self.axes[:, 1]))


@dataclass(frozen=True)
class Deformation:
    """A smooth random displacement of the anatomy, SynthSeg's non-linear deformation made analytic: a sum of
    plane waves u(p) = sum_i a_i sin(k_i . p + phi_i), so every painted point is displaced consistently
    without a volume-sized field. Image point p shows the phantom at p + u(p)."""

    k: np.ndarray  # (n, 3) wave vectors, rad / mm
    phase: np.ndarray  # (n,)
    amp: np.ndarray  # (n, 3) displacement of each wave, mm

    @classmethod
    def draw(cls, rng: np.random.Generator, amplitude: float, waves: int = 6,
             wavelength: tuple[float, float] = (60.0, 160.0)) -> Deformation:
        """`amplitude`: the largest possible displacement (mm); wavelengths a knee-sized fraction of the limb."""
        d = rng.standard_normal((waves, 3))
        k = d / np.linalg.norm(d, axis=1, keepdims=True) * (2 * np.pi / rng.uniform(*wavelength, (waves, 1)))
        amp = rng.standard_normal((waves, 3))
        amp *= amplitude / np.abs(amp).sum(0).max()
        strain = _strain(amp, k)
        amp *= min(1.0, 0.5 / max(strain, 1e-9))  # strain <= 0.5: the warp never folds tissue over itself
        return cls(k.astype(np.float32), rng.uniform(0, 2 * np.pi, waves).astype(np.float32),
                   amp.astype(np.float32))

    @property
    def reach(self) -> float:
        """An upper bound on |u| along any axis (mm): boxes grow by it."""
        return float(np.abs(self.amp).sum(0).max())

    @property
    def lipschitz(self) -> float:
        """An upper bound on how much the warp stretches distances (distances to a level scale by it)."""
        return 1.0 + _strain(self.amp, self.k)

    def __call__(self, pts: Points) -> Points:
        arg = np.tensordot(self.k, pts, axes=1) + self.phase.reshape((-1,) + (1,) * (pts.ndim - 1))
        return pts + np.tensordot(self.amp.T, np.sin(arg), axes=1)


def _strain(amp: np.ndarray, k: np.ndarray) -> float:
    """A bound on the plane waves' displacement gradient: sum_i |a_i| |k_i|."""
    return float((np.linalg.norm(amp, axis=1) * np.linalg.norm(k, axis=1)).sum())


class Canvas:
    """A tissue-label volume painted structure by structure (later paints win).

    Distances are first taken at the centres of BLOCK x BLOCK pixel tiles; only tiles
    whose coarse distance lies within a tile's reach of a level are refined pixel by
    pixel, so large smooth structures cost a fraction of their area.
    """

    BLOCK = 4

    def __init__(self, grid: SliceGrid, mirror_x: bool, warp: Deformation | None = None):
        self.grid = grid
        self.labels = np.zeros(grid.shape, np.uint8)
        self.mirror = -1.0 if mirror_x else 1.0
        self.warp = warp
        self.reach = 1.6 * (self.BLOCK / 2) * np.sqrt(2) * grid.pixel_mm * (warp.lipschitz if warp else 1.0)

    def _world(self, pts: Points) -> Points:
        pts[0] *= self.mirror  # the phantom is defined for a right knee
        return self.warp(pts) if self.warp is not None else pts

    def _distance(self, box: tuple[slice, slice, slice], sdf: Sdf, levels: list[float]) -> np.ndarray:
        s, r, c = box
        n_r, n_c = r.stop - r.start, c.stop - c.start
        b = self.BLOCK
        ii = np.arange(s.start, s.stop, dtype=np.float32)
        rb = np.arange(r.start, r.stop, b, dtype=np.float32) + (b - 1) / 2
        cb = np.arange(c.start, c.stop, b, dtype=np.float32) + (b - 1) / 2
        coarse = sdf(self._world(self.grid.points(ii, rb, cb)))
        d = np.repeat(np.repeat(coarse, b, 1), b, 2)[:, :n_r, :n_c]
        near = np.zeros(coarse.shape, bool)
        for t in levels:
            near |= np.abs(coarse - t) < self.reach
        if near.any():
            k, bi, bj = np.nonzero(near)
            off = np.arange(b)
            rr = np.broadcast_to((bi[:, None] * b + off)[:, :, None], (len(k), b, b))
            cc = np.broadcast_to((bj[:, None] * b + off)[:, None, :], (len(k), b, b))
            kk = np.broadcast_to(k[:, None, None], (len(k), b, b))
            ok = (rr < n_r) & (cc < n_c)
            kk, rr, cc = kk[ok], rr[ok], cc[ok]
            pts = self.grid.points_flat((kk + s.start).astype(np.float32), (rr + r.start).astype(np.float32),
                                        (cc + c.start).astype(np.float32))
            d[kk, rr, cc] = sdf(self._world(pts))
        return d

    def paint(self, lo, hi, sdf: Sdf, levels: list[tuple[float, int]],
              where: Callable[[Points], np.ndarray] | None = None) -> None:
        """Set label L where sdf < t for each (t, L), in order (so put outer levels first)."""
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        if self.warp is not None:  # the structure may be displaced into view from outside its box
            lo, hi = lo - self.warp.reach, hi + self.warp.reach
        if self.mirror < 0:
            lo, hi = np.array([-hi[0], lo[1], lo[2]]), np.array([-lo[0], hi[1], hi[2]])
        box = self.grid.index_box(lo, hi)
        if box is None:
            return
        d = self._distance(box, sdf, [t for t, _ in levels])
        extra = None
        if where is not None:
            idx = [np.arange(b.start, b.stop, dtype=np.float32) for b in box]
            extra = where(self._world(self.grid.points(*idx)))
        view = self.labels[box]
        for t, label in levels:
            m = d < t
            if extra is not None:
                m &= extra
            view[m] = label


def supersampling(size: int) -> int:
    """Sub-pixels per side: point-sampling tissue labels below 256 px aliases sub-millimetre structures (the
    ACL's lining, cortices) into speckle, so small series are painted at >= 128 px and area-averaged. A scanner
    integrates signal over each voxel in the same way."""
    return 1 if size >= 256 else max(2, -(-128 // size)) if size < 128 else 2


def fine_grid(grid: SliceGrid, ss: int) -> SliceGrid:
    """The same series with each in-plane pixel split into ss x ss sub-pixels (their mean is the pixel)."""
    if ss == 1:
        return grid
    axes = grid.axes.copy()
    axes[:, 1:] /= ss
    origin = grid.origin - (ss - 1) / 2 * (axes[:, 1] + axes[:, 2])
    n, h, w = grid.shape
    return SliceGrid(origin=origin, axes=axes, shape=(n, h * ss, w * ss))


# World axis each plane's slices step along, and the (row, col) image axes.
PLANE_AXES = {
    "sagittal": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),  # rows superior->inferior, cols anterior->posterior
    "coronal": ((0, 1, 0), (0, 0, -1), (1, 0, 0)),
    "axial": ((0, 0, -1), (0, 1, 0), (1, 0, 0)),  # rows anterior->posterior
}
PLANE_CENTRE = {"sagittal": (0.0, 0.0, 12.0), "coronal": (0.0, 0.0, 12.0), "axial": (0.0, 0.0, 8.0)}
