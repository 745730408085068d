"""MR appearance: tissue signal per sequence, texture, blur, bias field, Rician noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sbssl.synth.anatomy import N_TISSUES

# Relative signal of each tissue label (anatomy.AIR .. LESION) in three sequences.
#                 air  skin  fat  muscle fluid cart cortex marrow lig  degen edema lesion
SIGNAL = {
    "pd": np.array([0, .45, .86, .36, .70, .56, .04, .80, .07, .42, .55, .62], np.float32),
    "t2fs": np.array([0, .30, .14, .25, .96, .44, .03, .16, .06, .55, .70, .88], np.float32),
    "t1": np.array([0, .50, .95, .38, .14, .42, .04, .88, .09, .26, .35, .22], np.float32),
    "pdfs": np.array([0, .34, .12, .30, .84, .56, .03, .14, .07, .50, .72, .76], np.float32),
}
TEXTURE = np.array([0, .05, .06, .10, .03, .04, .0, .14, .05, .08, .08, .1], np.float32)
assert all(len(v) == N_TISSUES for v in SIGNAL.values()) and len(TEXTURE) == N_TISSUES

# MRNet's planes: sagittal T2 fat-sat, coronal T1, axial PD fat-sat; each exam drifts toward PD.
PLANE_SEQUENCES = {"sagittal": ("t2fs", "pd"), "coronal": ("t1", "pd"), "axial": ("t2fs", "pd")}


def tissue_signal(plane: str, rng: np.random.Generator) -> np.ndarray:
    """Per-exam contrast: the plane's sequence mixed toward PD, each tissue jittered."""
    a, b = PLANE_SEQUENCES[plane]
    w = rng.uniform(0.0, 0.6)
    sig = (1 - w) * SIGNAL[a] + w * SIGNAL[b]
    return sig * rng.uniform(0.9, 1.1, N_TISSUES).astype(np.float32)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear-interpolation weights (n_out, n_in): upsampling as one matrix product."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.floor(pos).astype(int).clip(0, n_in - 2)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def smooth_field(shape: tuple[int, int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean unit-variance random field per slice, smooth over ~1/cells of the image."""
    coarse = rng.standard_normal((shape[0], cells, cells), dtype=np.float32)
    a, b = _interp_matrix(shape[1], cells), _interp_matrix(shape[2], cells)
    return np.einsum("rc,sct,wt->srw", a, coarse, b, optimize=True)


def bias_field(shape: tuple[int, int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative coil shading: a random quadratic in the image plane."""
    r = np.linspace(-1, 1, shape[1], dtype=np.float32)[:, None]
    c = np.linspace(-1, 1, shape[2], dtype=np.float32)[None, :]
    k = rng.uniform(-1, 1, 5).astype(np.float32) * strength
    field = k[0] * r + k[1] * c + k[2] * r * c - abs(k[3]) * r * r - abs(k[4]) * c * c
    return np.exp(field)[None]


_BANK_SIZE = 1 << 23
_bank: np.ndarray | None = None


def _noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit Gaussian noise as a random window of one fixed bank (drawn once per process).

    Drawing 2 x 2M normals per series was 40% of rendering; a window at a random offset
    of a shared bank is a copy-free view and keeps every exam a function of its seed.
    """
    global _bank
    if _bank is None:
        _bank = np.random.default_rng(20261126).standard_normal(_BANK_SIZE, dtype=np.float32)
    n = int(np.prod(shape))
    if n > _BANK_SIZE:
        return rng.standard_normal(shape, dtype=np.float32)
    o = int(rng.integers(0, _BANK_SIZE - n + 1))
    return _bank[o: o + n].reshape(shape)


def rician(s: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The magnitude image |s + n1 + i n2| of a real signal s with complex Gaussian noise of std sigma."""
    n1, n2 = _noise(s.shape, rng), _noise(s.shape, rng)
    mag = n1 * sigma
    mag += s
    np.square(mag, out=mag)
    n2 = n2 * sigma
    mag += np.square(n2, out=n2)
    return np.sqrt(mag, out=mag)


def render_signal(labels: np.ndarray, plane: str, rng: np.random.Generator, noise: float,
                  blur_px: float, ss: int = 1) -> np.ndarray:
    """Tissue labels (painted with ss x ss sub-pixels per pixel) -> uint8 magnitude image as the scanner would
    store it: the signal is area-averaged over each pixel before blur, shading and noise."""
    s = np.take(tissue_signal(plane, rng), labels)
    tex = smooth_field(labels.shape, max(labels.shape[1] // (6 * ss), 4), rng)
    tex *= np.take(TEXTURE, labels)
    tex += 1.0
    s *= tex
    if ss > 1:
        n, h, w = s.shape
        s = s.reshape(n, h // ss, ss, w // ss, ss).mean((2, 4))
    if blur_px > 0:
        s = ndimage.gaussian_filter(s, (0, blur_px, blur_px), truncate=2.0)
    s *= bias_field(s.shape, rng, rng.uniform(0.1, 0.35))
    mag = rician(s, noise, rng)
    top = np.percentile(mag[:, ::4, ::4], 99.7) * rng.uniform(0.95, 1.1)
    mag *= 255.0 / max(top, 1e-6)
    return np.clip(mag, 0, 255, out=mag).astype(np.uint8)
