"""GMML group masking: corrupt groups of connected pixels, batched on the training device.

Per image a target area U(min(0.5, r), r) * H * W is drawn (r = max_ratio); random
rectangles (corners on an `align` grid, sides in [align, max_block * H]) are added in
order until their union reaches the target, as in the reference GMML code. Instead of
a Python loop per image, all K candidate rectangles of the whole batch are drawn at
once and the union of the first n of them is rendered with a 2-D difference array
(four scatter-adds and two cumulative sums); a per-image binary search finds the
smallest n whose union covers the target. The masked pixels are then replaced by
zeros (the dataset mean after normalisation), ones (white), N(0, 1) noise, pixels of
another image of the batch, or a per-image mix of these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sbssl.registry import MASK_REPLACEMENTS
from sbssl.utils.draw import Draw


@dataclass
class GroupMasking:
    max_ratio: float = 0.7
    align: int = 1
    replace: tuple[str, ...] = ("noise",)
    max_block: float = 0.3
    ones_value: float = 1.0  # "white" in normalised units, (1 - mean) / std
    candidates: int = 0  # rectangles drawn per image; 0 = enough for max_ratio with margin

    @classmethod
    def from_config(cls, mask_cfg, ones_value: float = 1.0) -> GroupMasking:
        types = [t.strip() for t in str(mask_cfg.type).split(",")]
        replace = MASK_REPLACEMENTS.names() if types == ["mix"] else tuple(types)
        return cls(mask_cfg.max_ratio, mask_cfg.align, replace, mask_cfg.max_block, ones_value)

    def _n_candidates(self, hg: int, wg: int) -> int:
        if self.candidates:
            return self.candidates
        mean_side = (1 + max(1, int(self.max_block * hg))) / 2
        frac = mean_side * (1 + max(1, int(self.max_block * wg))) / 2 / (hg * wg)
        # enough rectangles that their expected union exceeds max_ratio comfortably
        need = -math.log(1 - min(self.max_ratio, 0.97)) / max(frac, 1e-4)
        return int(min(max(16, 2.2 * need), 512))

    def sample_mask(self, b: int, h: int, w: int, draw: Draw) -> torch.Tensor:
        """Boolean (B, 1, H, W) masks with the GMML area distribution."""
        a, device = self.align, draw.device
        hg, wg = h // a, w // a
        k = self._n_candidates(hg, wg)
        lo = min(0.5, self.max_ratio)
        target = (lo + (self.max_ratio - lo) * draw.rand(b)) * (hg * wg)
        max_h, max_w = max(1, int(self.max_block * hg)), max(1, int(self.max_block * wg))
        rh = draw.randint(1, max_h + 1, b, k)
        rw = draw.randint(1, max_w + 1, b, k)
        r0 = (draw.rand(b, k) * hg).long()
        c0 = (draw.rand(b, k) * wg).long()
        r1, c1 = (r0 + rh).clamp(max=hg), (c0 + rw).clamp(max=wg)

        def union(n: torch.Tensor) -> torch.Tensor:
            wt = (torch.arange(k, device=device)[None] < n[:, None]).float()
            diff = torch.zeros(b, (hg + 1) * (wg + 1), device=device)
            stride = wg + 1
            for rr, cc, sign in ((r0, c0, 1.0), (r0, c1, -1.0), (r1, c0, -1.0), (r1, c1, 1.0)):
                diff.scatter_add_(1, rr * stride + cc, sign * wt)
            cnt = diff.view(b, hg + 1, wg + 1).cumsum(1).cumsum(2)[:, :hg, :wg]
            return cnt > 0.5

        # smallest n in [1, k] whose union reaches the target (coverage grows with n); a fixed number of
        # halvings instead of `while (lo < hi).any()` never waits on the device (no host sync per step)
        lo_n = torch.ones(b, dtype=torch.long, device=device)
        hi_n = torch.full((b,), k, dtype=torch.long, device=device)
        for _ in range(max(1, (k - 1).bit_length())):
            mid = (lo_n + hi_n) // 2
            enough = union(mid).sum((1, 2)) >= target
            hi_n = torch.where(enough, mid, hi_n)
            lo_n = torch.where(enough, lo_n, mid + 1)
        mask = union(hi_n)
        if a > 1:
            mask = mask.repeat_interleave(a, 1).repeat_interleave(a, 2)
        out = torch.zeros(b, h, w, dtype=torch.bool, device=device)
        out[:, : hg * a, : wg * a] = mask
        return out[:, None]

    def replacement(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Per-image replacement values, the same shape as x."""
        b = x.shape[0]
        choice = draw.randint(0, len(self.replace), b)
        out = torch.zeros_like(x)
        for i, kind in enumerate(self.replace):
            out = torch.where((choice == i).view(b, 1, 1, 1), MASK_REPLACEMENTS[kind](x, draw, self), out)
        return out

    def __call__(self, x: torch.Tensor, draw: Draw | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupt a normalised batch (B, C, H, W); returns (corrupted, mask (B, 1, H, W))."""
        draw = draw or Draw(x.device)
        mask = self.sample_mask(x.shape[0], x.shape[2], x.shape[3], draw)
        return torch.where(mask, self.replacement(x, draw), x), mask


# The replacements of a masked group (`mask.type`, registered in sbssl.registry): fill(x, draw, masking).
def fill_zeros(x: torch.Tensor, draw: Draw, masking: GroupMasking) -> torch.Tensor:
    """The dataset mean, after normalisation."""
    return torch.zeros_like(x)


def fill_ones(x: torch.Tensor, draw: Draw, masking: GroupMasking) -> torch.Tensor:
    """White, in normalised units."""
    return torch.full_like(x, masking.ones_value)


def fill_noise(x: torch.Tensor, draw: Draw, masking: GroupMasking) -> torch.Tensor:
    return draw.randn(*x.shape, dtype=x.dtype)


def fill_image(x: torch.Tensor, draw: Draw, masking: GroupMasking) -> torch.Tensor:
    """Another image of the batch (the next one, cyclically); noise for a batch of one."""
    return x.roll(1, dims=0) if x.shape[0] > 1 else fill_noise(x, draw, masking)
