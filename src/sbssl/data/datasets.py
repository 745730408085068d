"""The one data path of both stages: batches of cache rows read whole, through a DataLoader.

Stage 1 reads single slices (`SliceDataset`), stage 2 whole exams (`ExamDataset`: the slices its classifier reads
of each exam, all exams of a batch in one fancy-indexed read). A batch is a list of indices chosen by the engine
(its shuffled, oversampled, per-rank order), so the loader only reads; both hand out uint8 tensors, and scaling,
augmentation and corruption happen batched on the training device (see `sbssl.augment`, `sbssl.masking`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sbssl.data.cache import SliceCache


def resample_index(lengths: torch.Tensor, f: int) -> torch.Tensor:
    """Flat indices (B * f) picking f evenly spaced slices of each exam (repeats when n < f)."""
    starts = torch.cumsum(lengths, 0) - lengths
    pos = torch.linspace(0, 1, f, device=lengths.device)[None] * (lengths[:, None] - 1).float()
    return (starts[:, None] + pos.round().long()).reshape(-1)


def gather_index(cache: SliceCache, exams: np.ndarray, slices: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Cache rows of the slices read for these exams -- f = `slices` evenly spaced ones per exam, or all of them
    (slices = 0) -- and the slices per exam."""
    exams = np.asarray(exams)
    lengths = torch.as_tensor(np.diff(cache.offsets)[exams])
    starts = np.asarray(cache.offsets[exams])
    if slices <= 0:
        flat = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths.tolist(), strict=True)])
        return flat, lengths
    base = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths.numpy())[:-1]]), slices)
    return resample_index(lengths, slices).numpy() + base, torch.full((len(exams),), slices)


def gather_exams(cache: SliceCache, exams: np.ndarray, slices: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The slices read for these exams (N, 1, H, W) uint8, and their lengths."""
    flat, lengths = gather_index(cache, exams, slices)
    return torch.from_numpy(cache.data[flat])[:, None], lengths


class SliceDataset(Dataset):
    """Every slice of a split: of one plane's cache, or of several (pretraining on all planes) one after another.
    Indexing with a list of indices reads a whole batch at once, in the order asked."""

    def __init__(self, caches: SliceCache | list[SliceCache]):
        self.caches = caches if isinstance(caches, list) else [caches]
        self.starts = np.cumsum([0] + [len(c.data) for c in self.caches])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, idx: np.ndarray) -> np.ndarray:
        if len(self.caches) == 1:
            return self.caches[0].data[idx]
        which = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx), *self.caches[0].data.shape[1:]), np.uint8)
        for k in np.unique(which):
            here = which == k
            out[here] = self.caches[k].data[idx[here] - self.starts[k]]
        return out

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, int | np.integer):
            return torch.from_numpy(self.read(np.array([idx])))
        return torch.from_numpy(self.read(np.asarray(idx)))[:, None]

    __getitems__ = __getitem__


class ExamDataset(Dataset):
    """Whole exams with labels. Indexed with a list of exam indices: a dict of `exams`, `labels`, `lengths` and
    either `slices` (uint8, the rows the classifier reads) or, with read=False, those `rows` (for a linear
    probe's feature table)."""

    def __init__(self, cache: SliceCache, labels: np.ndarray, slices: int = 0, read: bool = True):
        assert len(labels) == cache.n_exams
        self.cache, self.labels, self.slices, self.read = cache, np.asarray(labels), slices, read

    def __len__(self) -> int:
        return self.cache.n_exams

    def __getitem__(self, exams) -> dict[str, torch.Tensor]:
        exams = np.atleast_1d(np.asarray(exams))
        rows, lengths = gather_index(self.cache, exams, self.slices)
        out = {"exams": torch.from_numpy(exams), "labels": torch.as_tensor(self.labels[exams]), "lengths": lengths}
        if self.read:
            out["slices"] = torch.from_numpy(self.cache.data[rows])[:, None]
        else:
            out["rows"] = torch.from_numpy(rows)
        return out

    __getitems__ = __getitem__


def loader(dataset: Dataset, batches: list, workers: int = 0, device="cpu") -> DataLoader:
    """The given batches of indices, each read whole; with workers, prefetched (pinned on GPU)."""
    pin = torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin,
                      prefetch_factor=4 if workers else None, persistent_workers=False)
