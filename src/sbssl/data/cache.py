"""The slice cache: every slice of a split, cut to its region of interest, normalised and resized once,
memory-mapped.

Each volume is cut to its region of interest (a central slab of the stack and a central in-plane crop,
`roi`), robustly min-max scaled to [0, 1] (0.5th..99.5th percentile of the region), resized to img_size
and stored as uint8 in one contiguous array; exams are ranges in it. The
dataset mean/std (of the [0, 1] values) is computed while building and kept beside it.
Random access is then a page-cache read: data is never the bottleneck.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from sbssl.data.acl_region import localiser_digest
from sbssl.data.layout import ROI_FILE, ExamRecord, list_exams
from sbssl.data.localise import knee_region
from sbssl.data.prepare import Box, prepare_volume, roi
from sbssl.data.volume_io import load_npy, load_volume
from sbssl.errors import DataError
from sbssl.utils.io import atomic_write, atomic_write_json

CACHE_VERSION = 2
@dataclass
class SliceCache:
    """uint8 slices (N, S, S) + per-exam offsets; mean/std of slices scaled to [0, 1]."""

    data: np.ndarray
    offsets: np.ndarray  # (E + 1,) exam e is data[offsets[e]:offsets[e+1]]
    cases: list[str]
    mean: float
    std: float

    @property
    def n_exams(self) -> int:
        return len(self.cases)

    def exam(self, e: int) -> np.ndarray:
        return self.data[self.offsets[e]: self.offsets[e + 1]]


def _fingerprint(records: list[ExamRecord], size: int, crop: float, slab: float, mode: str) -> str:
    tag = {"knee": "|knee", "acl": f"|acl|{localiser_digest()}"}.get(mode, "")  # new localiser weights: rebuilt
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}|{crop}|{slab}{tag}".encode())
    for r in records:
        st = r.path.stat()
        h.update(f"{r.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        if mode == "box":
            h.update(f"|{r.box}".encode())
    return h.hexdigest()[:16]


def default_cache_dir(root: Path) -> Path:
    """ROOT/.sbssl-cache when writable, else ~/.cache/sbssl."""
    d = Path(root) / ".sbssl-cache"
    try:
        d.mkdir(exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sbssl"


def _n_slices(path: Path, slab: float, box: Box | None = None, mode: str = "center") -> int:
    vol = load_npy(path, mmap=True) if path.suffix.lower() == ".npy" else load_volume(path)
    if mode in ("knee", "acl") and box is None:  # where the knee lies: the series is read (acl: its slab too)
        s = knee_region(vol, 1.0, slab)[0]
        return s.stop - s.start
    return int(roi(vol, 1.0, slab, box).shape[0])  # a view: nothing of a memory-mapped volume is read


def exam_box(record: ExamRecord, boxes: bool) -> Box | None:
    """The record's ROI box when the region of interest is the box (data.roi=box); one clear line if it has none."""
    if not boxes:
        return None
    if record.box is None:
        raise DataError(record.path.parent / ROI_FILE, f"no ROI box for case {record.case} (data.roi=box needs "
                                                        "one per exam)")
    return record.box


def build_cache(records: list[ExamRecord], size: int, cache_dir: Path, name: str, crop: float = 1.0,
                slab: float = 1.0, mode: str = "center") -> SliceCache:
    """Load the cache for these exams, building it (atomically) when missing or stale; `mode`: data.roi, the
    region of interest (data/prepare.py: roi)."""
    cache_dir = Path(cache_dir)
    key = _fingerprint(records, size, crop, slab, mode)
    boxes = mode == "box"
    data_path, meta_path = cache_dir / f"{name}-{size}-{key}.npy", cache_dir / f"{name}-{size}-{key}.json"
    if data_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            return SliceCache(np.load(data_path, mmap_mode="r", allow_pickle=False), np.array(meta["offsets"]),
                              meta["cases"], meta["mean"], meta["std"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    counts = [_n_slices(r.path, slab, exam_box(r, boxes), mode) for r in records]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    value_sum, square_sum, count = 0.0, 0.0, 0

    def write(tmp: Path) -> None:
        nonlocal value_sum, square_sum, count
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(int(offsets[-1]), size, size))
        for e, r in enumerate(records):
            x = prepare_volume(load_volume(r.path), size, crop, slab, exam_box(r, boxes), mode)
            out[offsets[e]: offsets[e + 1]] = x
            sub = x[:, ::4, ::4].astype(np.float64) / 255.0
            value_sum, square_sum, count = value_sum + sub.sum(), square_sum + (sub * sub).sum(), count + sub.size
        out.flush()
        del out

    atomic_write(data_path, write)
    mean = value_sum / max(count, 1)
    std = float(np.sqrt(max(square_sum / max(count, 1) - mean * mean, 1e-12)))
    meta = {"offsets": offsets.tolist(), "cases": [r.case for r in records], "mean": mean, "std": std}
    atomic_write_json(meta_path, meta)
    return SliceCache(np.load(data_path, mmap_mode="r", allow_pickle=False), offsets, meta["cases"], mean, std)


def pooled_statistics(caches: list[SliceCache]) -> tuple[float, float]:
    """Mean and std of several caches' slices together (each cache's weighted by its slice count)."""
    n = np.array([len(c.data) for c in caches], np.float64)
    mean = float((n * [c.mean for c in caches]).sum() / n.sum())
    square = float((n * [c.std ** 2 + c.mean ** 2 for c in caches]).sum() / n.sum())
    return mean, float(np.sqrt(max(square - mean * mean, 1e-12)))


def slice_cache_for(cfg: DictConfig, root: Path, split: str, fabric=None, labelled: bool = True):
    """Build (rank 0 first) or open the slice cache of a split; returns (cache, records)."""
    records = list_exams(root, split, cfg.data.plane, cfg.data.task, labelled=labelled)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(root)
    name = f"{split}-{cfg.data.plane}"
    d = cfg.data
    args = (records, d.img_size, cache_dir, name, d.crop, d.slab, str(d.roi))
    if fabric is not None and fabric.world_size > 1:
        if fabric.global_rank == 0:
            build_cache(*args)
        fabric.barrier()
    return build_cache(*args), records
