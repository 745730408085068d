"""A region of interest centred on the ACL (data.roi=acl), found by a small localiser shipped with the package.

Why: at the recipes' scale (32 px input, 4 px patches) the region about the knee box (data.roi=knee) is centred
on the limb, whose shafts fill the field, not on the joint; the ACL lies off-centre and a patch spans the whole
ligament. Centred on the ligament, at a window of 0.35 x the field, the shipped encoder's classifier reads the tear
as the CNN does (docs/results.md: the oracle and located rows). The localiser needs no label: it was trained on
synthetic families, whose generator knows where every ACL is (synth/landmarks.py, models/acl_localiser.py).

Its input is the knee's view: the mean of the knee's central slab over a square of 1 / KNEE_FILL limb diameters
about the knee box (data/localise.py), 64 px, standardised; its output, the ACL's position as fractions of that
square (a soft-argmax over a 16 x 16 score map). The forward pass is numpy (convolutions as one einsum over
sliding windows, batch norm folded into them), so preparing an exam stays torch-free for exported models.

A localiser trained on one phantom may meet knees it cannot read. It is asked the same question several ways
(the view inverted, under two gammas, shifted by a few pixels each way: `variants`); the answer is the variants'
median, and where they disagree (a knee it can read answers all of them alike), the window is centred on the
ligament's usual place in the knee view (the training set's mean, `prior`) instead. Where they agree, the answer
stands wherever it lies in the view: a knee box that cut the joint near its edge (seen on held-out `shifted`)
still has its ACL found there.
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from sbssl.data.localise import KNEE_FILL, KneeBox, knee_box, knee_slab, square_about
from sbssl.data.prepare import resize_slices, robust_minmax

VIEW_SIZE = 64  # the localiser's input, px
VIEW_SLAB = 0.4  # the knee's central slices averaged into its view
POOLED = (0, 1)  # conv blocks followed by a 2 x 2 max-pool
SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "acl_localiser.safetensors"
SHIFT = 4  # px of the view: the shifted variants
UNSURE = 0.05  # the variants' median distance from their median answer (fraction of the view) beyond which it
# is not trusted: 15x the largest on the selection family `varied` (0.003; benchmarks/acl_localiser.py). Set high,
# since falling back costs where the answer was right: only clear disagreement (noise-like views reach 0.03-0.06)
log = logging.getLogger("sbssl")


def knee_view(vol: np.ndarray, box: KneeBox) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The localiser's input: the mean of the knee's central slab over a square of 1 / KNEE_FILL limb diameters
    about the knee box, 64 px in [0, 1]; and that square (first row, first column, side) in stored pixels
    (zero-padded where it leaves the field)."""
    side = max(8, round(box.diameter / KNEE_FILL))
    r0, c0 = (round(c - side / 2) for c in box.centre)
    mean = robust_minmax(np.asarray(vol[knee_slab(box, VIEW_SLAB)], np.float32)).mean(0)
    view = np.pad(mean, side)[r0 + side:r0 + 2 * side, c0 + side:c0 + 2 * side]
    return resize_slices(view[None], VIEW_SIZE)[0], (r0, c0, side)


def standardised(x: np.ndarray) -> np.ndarray:
    """Each view to zero mean and unit deviation: the localiser must not depend on a sequence's brightness."""
    x = np.asarray(x, np.float32)
    return (x - x.mean((-2, -1), keepdims=True)) / (x.std((-2, -1), keepdims=True) + 1e-3)


def conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, O, H, W), zero padding 1: one einsum over the 3 x 3 sliding windows."""
    win = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), (2, 3))
    return np.einsum("nchwij,ocij->nohw", win, weight, optimize=True) + bias[None, :, None, None]


def soft_argmax(scores: np.ndarray) -> np.ndarray:
    """(N, h, w) scores -> (N, 2) expected (row, col) under their softmax, as fractions of the map's side."""
    n, h, w = scores.shape
    p = np.exp(scores - scores.max((1, 2), keepdims=True))
    p /= p.sum((1, 2), keepdims=True)
    rows, cols = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    return np.stack([p.sum(2) @ rows, p.sum(1) @ cols], 1).astype(np.float32)


def localise(views: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 64, 64) knee views -> (N, 2) the ACL's (row, col) as fractions of each view's side."""
    x = standardised(views)[:, None]
    i = 0
    while f"conv{i}.weight" in weights:
        x = np.maximum(conv3x3(x, weights[f"conv{i}.weight"], weights[f"conv{i}.bias"]), 0)
        if i in POOLED:
            n, c, h, w = x.shape
            x = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max((3, 5))
        i += 1
    scores = np.einsum("nchw,c->nhw", x, weights["score.weight"].reshape(-1)) + weights["score.bias"][0]
    return soft_argmax(scores)


def variants(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 64, 64) views in [0, 1] -> (N, K, 64, 64) the same views inverted, under gammas 0.5 and 2, and shifted
    by SHIFT px along each axis (edges replicated); and (K, 2) how far each variant moves the ACL (fractions)."""
    v, s, n = np.clip(views, 0.0, 1.0), SHIFT, views.shape[-1]
    padded = np.pad(v, ((0, 0), (s, s), (s, s)), mode="edge")
    moves = [(s, 0), (-s, 0), (0, s), (0, -s)]
    shifted = [padded[:, s - dr:s - dr + n, s - dc:s - dc + n] for dr, dc in moves]
    out = np.stack([v, 1.0 - v, np.sqrt(v), v * v, *shifted], 1)
    offsets = np.array([(0, 0)] * 4 + moves, np.float32) / n
    return out, offsets


def located(views: np.ndarray, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 64, 64) views -> (N, 2) the ACL's (row, col), the median answer over the views' variants; and (N,)
    their spread: the variants' median distance from that answer (fractions of the view)."""
    many, offsets = variants(views)
    n, k = many.shape[:2]
    answers = localise(many.reshape(n * k, *many.shape[2:]), weights).reshape(n, k, 2) - offsets
    centre = np.median(answers, 1)
    return centre, np.median(np.linalg.norm(answers - centre[:, None], axis=-1), 1)


def answered(views: np.ndarray, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) the answers data.roi=acl uses: the variants' median, or the prior where their spread exceeds UNSURE;
    and (N,) that spread."""
    centre, spread = located(views, weights)
    return np.where((spread > UNSURE)[:, None], weights["prior"], centre), spread


@lru_cache(maxsize=4)
def load_localiser(path: Path = SHIPPED) -> dict[str, np.ndarray]:
    """The localiser's folded weights (safetensors: no pickle); one clear line where the file is missing."""
    from safetensors.numpy import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: the ACL localiser (data.roi=acl) is missing from this installation")
    weights = {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
    if "prior" not in weights or "score.weight" not in weights:
        raise ValueError(f"{path}: not an ACL localiser of this version (no 'score' or 'prior' tensor); "
                         "remake it with tools/make_acl_localiser.sh")
    return weights


def acl_centre(vol: np.ndarray, box: KneeBox | None = None, path: Path = SHIPPED) -> tuple[float, float]:
    """The ACL's predicted (row, col) in a sagittal series' stored pixels; where the localiser is unsure, the
    ligament's usual place in the knee's view."""
    box = knee_box(vol) if box is None else box
    view, (r0, c0, side) = knee_view(vol, box)
    ((fr, fc),), (spread,) = answered(view[None], load_localiser(path))
    if spread > UNSURE:
        log.info("ACL localiser unsure (its variants %.3f of the knee view apart): the window is centred on the "
                 "ligament's usual place", spread)
    return r0 + float(fr) * side, c0 + float(fc) * side


def acl_region(vol: np.ndarray, crop: float, slab: float, path: Path = SHIPPED) -> tuple[slice, slice, slice]:
    """Index ranges of the region centred on the ACL: the central `slab` of the knee's slices (as
    data.roi=knee) and a square of `crop` x the field's height centred on the predicted ligament (inside the
    field). The window is a fraction of the field, not of the knee, as it was measured (0.35: docs/results.md)."""
    box = knee_box(vol)
    side = round(crop * vol.shape[1])
    return (knee_slab(box, slab),) + square_about(acl_centre(vol, box, path), side, vol.shape[1:])


@lru_cache(maxsize=4)
def localiser_digest(path: Path = SHIPPED) -> str:
    """A short digest of the localiser's file and of how its answers are used (variants, threshold), so that
    slice caches made with other weights or another rule are rebuilt."""
    if not Path(path).is_file():
        return "missing"
    return hashlib.sha1(Path(path).read_bytes() + f"median-of-variants {SHIFT} {UNSURE}".encode()).hexdigest()[:12]
