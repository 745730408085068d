"""The preprocessing record: everything that turns a raw volume into model input, in one typed value.

It is decided once per run (from the config, the training set's statistics, or the pretrained encoder it starts
from), saved with every encoder (safetensors metadata) and every run (run.json), and read back by every consumer
(fine-tuning, evaluation, explanation, prediction), so a model always sees its inputs prepared as in training
and the config stays what the user asked for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from sbssl.data.layout import ROI_MODES
from sbssl.data.prepare import prepare_volume

if TYPE_CHECKING:  # the record and `prepare` are torch-free: an exported model scores without torch
    import torch
    from omegaconf import DictConfig


@dataclass(frozen=True)
class Preprocessing:
    img_size: int  # slices resized to img_size x img_size
    in_chans: int = 1  # grey repeated to this many channels
    crop: float = 1.0  # central fraction of the field kept (data/cache.py: roi)
    slab: float = 1.0  # central fraction of the stack kept
    mean: float = 0.0  # of the [0, 1]-scaled training slices
    std: float = 1.0
    roi: str = "center"  # center: crop + slab; knee: about the knee; acl: about the ACL; box: each exam's ROI box

    def __post_init__(self) -> None:
        ok = (self.img_size >= 8 and self.in_chans >= 1 and 0 < self.crop <= 1 and 0 < self.slab <= 1
              and math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0
              and self.roi in ROI_MODES)
        if not ok:
            raise ValueError(f"implausible preprocessing {self}")

    @classmethod
    def from_config(cls, cfg: DictConfig, mean: float, std: float) -> Preprocessing:
        """The config's sizes with the given statistics (the config's own, when it sets them)."""
        d = cfg.data
        if d.mean > 0:
            mean, std = float(d.mean), float(d.std)
        return cls(int(d.img_size), int(cfg.model.in_chans), float(d.crop), float(d.slab), float(mean), float(std),
                   str(d.roi))

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> Preprocessing:
        """From string metadata (an encoder's safetensors header); encoders written before the region of interest
        existed saw the whole field."""
        return cls(int(meta["img_size"]), int(meta.get("in_chans", 1)), float(meta.get("crop", 1.0)),
                   float(meta.get("slab", 1.0)), float(meta["mean"]), float(meta["std"]), meta.get("roi", "center"))

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**{k: d[k] for k in ("img_size", "in_chans", "crop", "slab", "mean", "std")},
                   roi=d.get("roi", "center"))

    def to_meta(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    def to_dict(self) -> dict:
        return asdict(self)

    def prepare(self, vol: np.ndarray, box: tuple[int, ...] | None = None) -> np.ndarray:
        """A raw volume (slices, H, W) -> uint8 slices (S, img_size, img_size), exactly as the cache holds them;
        `box`: the exam's ROI box, which a record with roi="box" needs."""
        if self.roi == "box" and box is None:
            raise ValueError("this model reads each exam's ROI box (data.roi=box) and none was given")
        return prepare_volume(vol, self.img_size, self.crop, self.slab, box if self.roi == "box" else None,
                              mode=self.roi)

    def standardise(self, x01: torch.Tensor) -> torch.Tensor:
        """Slices scaled to [0, 1] (B, 1, H, W) -> the model's input space."""
        x = (x01 - self.mean) / self.std
        return x.expand(-1, self.in_chans, -1, -1) if self.in_chans != 1 else x

    def normalise(self, x_u8: torch.Tensor) -> torch.Tensor:
        """Cached uint8 slices -> the model's input space."""
        return self.standardise(x_u8.float() / 255.0)
