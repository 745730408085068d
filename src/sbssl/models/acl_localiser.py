"""The ACL localiser behind data.roi=acl: a small CNN, trained on synthetic families without a single label.

Each exam of a generated family set gives its knee's view (data/acl_region.py: knee_view) and, from the
generator's replayed draws, where its ACL is (synth/landmarks.py). Four conv blocks score every position of a
16 x 16 map; the expected position under the scores' softmax (soft-argmax) is fitted to the ligament's with an L1
loss. Intensities are re-drawn per view (a random gamma, inverted half of the time), since sequences differ in
which tissues are bright and the localiser must find the joint's shape, not one contrast. Once trained, batch
norm is folded into the convolutions and the weights are written for the numpy forward pass that preparation
uses (data/acl_region.py: localise), which must agree with this module's (tests/test_acl_region.py).

    python -m sbssl.weights localiser ROOT[,ROOT...]    # -> src/sbssl/weights/acl_localiser.safetensors
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sbssl.data.acl_region import POOLED, knee_view
from sbssl.data.layout import list_exams
from sbssl.data.localise import knee_box
from sbssl.data.volume_io import load_volume
from sbssl.synth.landmarks import set_acl_midpoints

CHANNELS = (1, 16, 32, 64, 64)


class AclLocaliser(nn.Module):
    """Knee views (N, 1, 64, 64), standardised -> the ACL's (row, col) as fractions of the view's side."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
                          *([nn.MaxPool2d(2)] if i in POOLED else []))
            for i, (a, b) in enumerate(zip(CHANNELS[:-1], CHANNELS[1:], strict=True)))
        self.score = nn.Conv2d(CHANNELS[-1], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        s = self.score(x)[:, 0]
        h, w = s.shape[1:]
        p = s.flatten(1).softmax(1).view_as(s)
        rows = (torch.arange(h, dtype=p.dtype) + 0.5) / h
        cols = (torch.arange(w, dtype=p.dtype) + 0.5) / w
        return torch.stack([(p.sum(2) * rows).sum(1), (p.sum(1) * cols).sum(1)], 1)

    def folded(self) -> dict[str, np.ndarray]:
        """The eval-mode network as numpy weights, each batch norm folded into the conv before it."""
        out = {}
        for i, block in enumerate(self.blocks):
            conv, bn = block[0], block[1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            out[f"conv{i}.weight"] = conv.weight * scale[:, None, None, None]
            out[f"conv{i}.bias"] = bn.bias - bn.running_mean * scale
        out["score.weight"], out["score.bias"] = self.score.weight, self.score.bias
        return {k: v.detach().float().numpy().copy() for k, v in out.items()}


def standardised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True, correction=0) + 1e-3)


def contrast_draw(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each view's intensities re-drawn: a random gamma in [e^-0.7, e^0.7], inverted half of the time."""
    n = x.shape[0]
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.7, 0.7, generator=gen))
    x = x.clamp(0, 1) ** gamma
    return standardised(torch.where(torch.rand(n, 1, 1, 1, generator=gen) < 0.5, 1 - x, x))


def split_views(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One split of a generated family set: (views (N, 64, 64), the ACL's position in each view as fractions of
    its side, each view's side and each field's height in stored pixels)."""
    at = set_acl_midpoints(root, split)
    xs, ys, sides, fields = [], [], [], []
    for r in list_exams(root, split, "sagittal", "acl"):
        vol = load_volume(r.path)
        view, (r0, c0, side) = knee_view(vol, knee_box(vol))
        _, row, col = at[r.case]
        xs.append(view)
        ys.append(((row - r0) / side, (col - c0) / side))
        sides.append(side)
        fields.append(vol.shape[1])
    return (np.stack(xs).astype(np.float32), np.array(ys, np.float32), np.array(sides, np.float32),
            np.array(fields, np.float32))


def training_views(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(views, the ACL's position in each) of both splits of a generated family set."""
    parts = [split_views(root, split)[:2] for split in ("train", "valid")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def train_localiser(views: np.ndarray, targets: np.ndarray, epochs: int = 30, batch: int = 32,
                    seed: int = 0) -> AclLocaliser:
    """AdamW under a one-cycle schedule (peak 2e-3), every view's contrast re-drawn at every step."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = AclLocaliser()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    x, y = torch.from_numpy(views)[:, None], torch.from_numpy(targets)
    per_epoch = max(1, len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * per_epoch)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(per_epoch):
            b = order[i * batch:(i + 1) * batch]
            loss = F.l1_loss(net(contrast_draw(x[b], gen)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def save_localiser(net: AclLocaliser, path: Path, meta: dict[str, str], prior: np.ndarray) -> Path:
    """The folded weights as safetensors (float32: 0.2 MB), written atomically, with `prior`: the ACL's mean
    position over the training views, where data.roi=acl centres the window when the localiser is unsure."""
    from safetensors.numpy import save_file

    from sbssl.utils.io import atomic_write

    tensors = {**net.folded(), "prior": np.asarray(prior, np.float32).reshape(2)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return Path(path)
