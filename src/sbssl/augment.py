"""The paper's augmentations, drawn per sample and applied to a whole batch on the device.

torchvision's v2 transforms draw one set of random parameters per call, so a batch
would share one crop; here each sample (or each exam, via `groups`) draws its own:
random resized crop + horizontal flip as one affine resampling (bilinear), Gaussian
blur, sharpness, brightness and contrast. Saturation and hue, also listed in the
paper, have no meaning for one-channel MRI and are left out. Input and output are
images in [0, 1].

The flip is a mirror of the image's horizontal axis. It is anatomically valid only where that axis is the
patient's left-right (coronal and axial series: a left knee is the mirror of a right one); on a sagittal
slice it swaps anterior and posterior, an image no scanner produces, so `for_plane` turns it off there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sbssl.utils.draw import Draw

# Does a horizontal mirror of this plane's slices give an image a scanner could produce?
MIRROR_IS_ANATOMICAL = {"sagittal": False, "coronal": True, "axial": True}


def flip_probability(flip: float, plane: str) -> float:
    """The configured flip where the mirror is left-right of the patient; 0 where it is anterior-posterior."""
    return flip if MIRROR_IS_ANATOMICAL.get(plane, False) else 0.0


@dataclass
class SliceAugment:
    crop_scale: tuple[float, float] = (0.25, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    blur: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    sharpness: float = 0.2
    brightness: float = 0.2
    contrast: float = 0.2
    jitter: float = 0.8

    @classmethod
    def from_config(cls, a, plane: str = "sagittal") -> SliceAugment:
        return cls(tuple(a.crop_scale), (3 / 4, 4 / 3), flip_probability(a.flip, plane), a.blur,
                   tuple(a.blur_sigma), a.sharpness, a.brightness, a.contrast, a.jitter)

    def __call__(self, x: torch.Tensor, groups: torch.Tensor | None = None,
                 draw: Draw | None = None) -> torch.Tensor:
        """x (N, C, H, W) in [0, 1]. groups: per-group lengths summing to N; a group shares one draw."""
        n = x.shape[0] if groups is None else len(groups)
        rng = draw or Draw(x.device)

        def uniform(k: int) -> torch.Tensor:  # k uniforms per sample (or per group, repeated)
            u = rng.rand(n, k)
            return u if groups is None else u.repeat_interleave(groups.to(x.device), 0)

        x = self._crop_flip(x, uniform(5))
        x = self._blur(x, uniform(2))
        x = self._sharpen(x, uniform(2))
        return self._jitter(x, uniform(3)).clamp_(0.0, 1.0)

    def _crop_flip(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Random area/aspect crop and flip as one affine grid per sample."""
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * u[:, 0]
        log_r = math.log(self.crop_ratio[0]) + (math.log(self.crop_ratio[1]) - math.log(self.crop_ratio[0])) * u[:, 1]
        ratio = log_r.exp()
        sw, sh = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        cx, cy = (2 * u[:, 2] - 1) * (1 - sw), (2 * u[:, 3] - 1) * (1 - sh)
        flip = torch.where(u[:, 4] < self.flip, -1.0, 1.0)
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = sw * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = sh, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _blur(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.blur <= 0:
            return x
        on = u[:, 0] < self.blur
        if not bool(on.any()):
            return x
        s_lo, s_hi = self.blur_sigma
        sigma = torch.where(on, s_lo + (s_hi - s_lo) * u[:, 1], torch.full_like(u[:, 1], 1e-3))
        radius = int(math.ceil(3 * s_hi))
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
        k = k / k.sum(1, keepdim=True)  # (N, 2r+1)
        n, c, h, w = x.shape
        k = k.repeat_interleave(c, 0)
        y = x.reshape(1, n * c, h, w)
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c)
        return y.reshape(n, c, h, w)

    def _sharpen(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """PIL-style sharpness: blend with a 3x3 smoothed copy by a random factor in [0, 2]."""
        if self.sharpness <= 0:
            return x
        factor = torch.where(u[:, 0] < self.sharpness, 2 * u[:, 1], torch.ones_like(u[:, 1]))
        kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
        c = x.shape[1]
        smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(c, 1, 3, 3), groups=c)
        f = factor.view(-1, 1, 1, 1)
        return smooth + f * (x - smooth)

    def _jitter(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        on = (u[:, 0] < self.jitter).view(-1, 1, 1, 1)
        b = 1 + self.brightness * (2 * u[:, 1] - 1)
        c = 1 + self.contrast * (2 * u[:, 2] - 1)
        mean = x.mean((1, 2, 3), keepdim=True)
        y = (x * b.view(-1, 1, 1, 1) - mean) * c.view(-1, 1, 1, 1) + mean
        return torch.where(on, y, x)

