"""PyTorch datasets over the slice cache: single slices (stage 1) and whole exams (stage 2).

Both hand out uint8 tensors; scaling, augmentation and corruption happen batched on the
training device (see `sbssl.augment`, `sbssl.masking`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sbssl.data.cache import SliceCache


class SliceDataset(Dataset):
    """Every slice of a split. Indexing with a list of indices reads a whole batch at once."""

    def __init__(self, cache: SliceCache):
        self.cache = cache

    def __len__(self) -> int:
        return int(self.cache.data.shape[0])

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, int | np.integer):
            return torch.from_numpy(np.array(self.cache.data[idx]))[None]
        return torch.from_numpy(self.cache.data[np.asarray(idx)])[:, None]  # in the order asked

    __getitems__ = __getitem__


class ExamDataset(Dataset):
    """Whole exams with labels; `collate_exams` packs a batch of variable-length exams."""

    def __init__(self, cache: SliceCache, labels: Sequence[int | None]):
        assert len(labels) == cache.n_exams
        self.cache, self.labels = cache, list(labels)

    def __len__(self) -> int:
        return self.cache.n_exams

    def __getitem__(self, e: int) -> tuple[torch.Tensor, int, int]:
        lab = self.labels[e]
        return torch.from_numpy(np.array(self.cache.exam(e))), -1 if lab is None else int(lab), e


def collate_exams(batch) -> dict[str, torch.Tensor]:
    """Concatenate slices of all exams (one encoder pass) and keep each exam's length."""
    slices, labels, index = zip(*batch, strict=True)
    return {"slices": torch.cat(slices)[:, None], "lengths": torch.tensor([len(s) for s in slices]),
            "labels": torch.tensor(labels), "index": torch.tensor(index)}

