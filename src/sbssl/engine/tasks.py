"""What one training step computes in each stage. A task owns the step's whole computation -- preparing the
inputs, calling the model, the loss -- and returns the loss with what it was computed from (as MAE's forward
returns loss, prediction and mask), so training, benchmarks and the reconstruction figures share one definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from sbssl.augment import SliceAugment
from sbssl.data.preprocessing import Preprocessing
from sbssl.masking import GroupMasking
from sbssl.models.gmml import masked_l1, patch_statistics
from sbssl.utils.draw import Draw


@dataclass
class GMMLOutput:
    loss: torch.Tensor  # masked L1, averaged over the corrupted pixels (of the global batch under DDP)
    recon: torch.Tensor  # in the target's units (a patch-standardised prediction mapped back by its patch's stats)
    target: torch.Tensor  # the clean (augmented, standardised) slices
    corrupted: torch.Tensor
    mask: torch.Tensor  # True where pixels were replaced


class GMMLTask:
    """Stage 1 (paper section 3.2): augment -> corrupt connected groups -> reconstruct from the average of the
    skip blocks -> L1 on the corrupted pixels only (eq. 2)."""

    def __init__(self, cfg: DictConfig, pre: Preprocessing):
        self.augment = SliceAugment.from_config(cfg.augment, cfg.data.plane)
        self.masking = GroupMasking.from_config(cfg.mask, ones_value=(1.0 - pre.mean) / pre.std)
        self.standardise = pre.standardise
        self.norm_patch = cfg.mask.norm_patch

    def inputs(self, x_u8: torch.Tensor, draw: Draw, augment: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean target, corrupted input, mask), standardised; without augment for fixed figures."""
        x01 = x_u8.float() / 255.0
        x = self.standardise(self.augment(x01, draw=draw) if augment else x01)
        corrupted, mask = self.masking(x, draw)
        return x, corrupted, mask

    def __call__(self, model: torch.nn.Module, x_u8: torch.Tensor, draw: Draw, augment: bool = True,
                 global_count: Callable[[torch.Tensor], torch.Tensor] | None = None) -> GMMLOutput:
        """`global_count` turns this rank's count of corrupted pixels into the global batch's mean count, so
        that the DDP gradient equals one process's."""
        target, corrupted, mask = self.inputs(x_u8, draw, augment)
        recon = model(corrupted, mask).float()  # a ViT sees the corrupted image; a sparse CNN drops the mask
        count = mask.to(recon.dtype).expand_as(recon).sum()
        if global_count is not None:
            count = global_count(count)
        if not self.norm_patch:
            return GMMLOutput(masked_l1(recon, target, mask, count), recon, target, corrupted, mask)
        mean, std = patch_statistics(target, self.norm_patch)
        loss = masked_l1(recon, (target - mean) / std, mask, count)
        return GMMLOutput(loss, recon * std + mean, target, corrupted, mask)


@dataclass
class JigsawOutput:
    loss: torch.Tensor  # cross-entropy over the permutation set
    logits: torch.Tensor
    label: torch.Tensor


class JigsawTask:
    """Stage 1 with reference [20]'s pretext: augment -> standardise -> a shuffled 3 x 3 puzzle (jigsaw.py) ->
    the jigsaw network -> cross-entropy on the permutation's index."""

    def __init__(self, cfg: DictConfig, pre: Preprocessing):
        from sbssl.jigsaw import JigsawPuzzle

        self.augment = SliceAugment.from_config(cfg.augment, cfg.data.plane)
        self.puzzle = JigsawPuzzle(cfg.jigsaw.permutations, cfg.jigsaw.gap, cfg.jigsaw.noise)
        self.standardise = pre.standardise

    def __call__(self, model: torch.nn.Module, x_u8: torch.Tensor, draw: Draw, augment: bool = True,
                 global_count: Callable[[torch.Tensor], torch.Tensor] | None = None) -> JigsawOutput:
        """`global_count` is GMML's (a mean over every sample already matches one process under DDP)."""
        x01 = x_u8.float() / 255.0
        tiles, label = self.puzzle(self.standardise(self.augment(x01, draw=draw) if augment else x01), draw)
        logits = model(tiles).float()
        return JigsawOutput(F.cross_entropy(logits, label), logits, label)


class ExamTask:
    """Stage 2: augment each exam's slices (one draw per exam) -> slice classifier -> cross-entropy on the exam
    label. A frozen encoder's slice features, computed once, can stand in for the slices (linear probing)."""

    def __init__(self, cfg: DictConfig, pre: Preprocessing):
        self.augment = SliceAugment.from_config(cfg.augment, cfg.data.plane)
        self.pre = pre

    def __call__(self, model: torch.nn.Module, x_u8: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor,
                 draw: Draw) -> torch.Tensor:
        x = self.augment(x_u8.float() / 255.0, groups=lengths, draw=draw)
        return F.cross_entropy(model(self.pre.standardise(x), lengths).float(), y)

    @staticmethod
    def from_features(model: torch.nn.Module, feats: torch.Tensor, lengths: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(feats, lengths, from_features=True).float(), y)
