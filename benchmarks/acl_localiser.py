"""Can the ACL be found without a label? A prototype localiser, trained on synthetic families, tested on others.

oracle_probe.py showed the shipped encoder's frozen tokens read the tear in PD (0.87) when the input is centred on
the ligament at 2-2.8x downsampling, and not in the recipes' region about the knee (0.54-0.67 at 4x, the ACL
off-centre). This asks whether a small network can supply that centre. The generator knows every ACL
(`oracle_probe.acl_index`), so training needs no annotation: each exam of the training families gives the mean of
its knee slab (data/localise.py: the central 40% of the knee's slices) over the whole knee region (1 / KNEE_FILL
limb diameters about the knee box, 64 px) and the ACL's position in it. A small CNN scores every position and
returns the expected position under the softmax of its scores (soft-argmax), trained with an L1 loss; intensities
are re-drawn per image (a random gamma, and an inversion half of the time), since sequences differ in which
tissues are bright. Reported on other families: the error as a fraction of the region's side, and how often the
ACL falls inside a window of 0.35 x the field centred on the prediction (the oracle's).

usage: python benchmarks/acl_localiser.py --train ROOT[,ROOT] --test ROOT[,ROOT] [--epochs 30]
                                          [--boxes TARGET_ROOT OUT --window 0.35] [--name NAME] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from _common import record
from oracle_probe import acl_index

from sbssl.data.layout import list_exams
from sbssl.data.localise import KNEE_FILL, knee_box
from sbssl.data.prepare import resize_slices, robust_minmax
from sbssl.data.volume_io import load_volume
from sbssl.synth.dataset import assign_labels

SIZE, SLAB = 64, 0.4


def knee_view(vol: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The mean of the knee's central slab over a square of 1 / KNEE_FILL limb diameters about the knee box, 64
    px in [0, 1]; and that square (row, col, side) in stored pixels (zero-padded where it leaves the field)."""
    box = knee_box(vol)
    a, b = box.slices
    keep = max(1, round(SLAB * (b - a)))
    s0 = a + (b - a - keep) // 2
    side = max(8, round(box.diameter / KNEE_FILL))
    r0, c0 = (round(c - side / 2) for c in box.centre)
    mean = robust_minmax(np.asarray(vol[s0:s0 + keep], np.float32)).mean(0)
    pad = np.pad(mean, side)
    view = pad[r0 + side:r0 + 2 * side, c0 + side:c0 + 2 * side]
    return resize_slices(view[None], SIZE)[0], (r0, c0, side)


def samples(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list]:
    """(views, ACL positions in the view as fractions of its side, (record, square) per exam)."""
    spec = json.loads((root / "findings" / "synth.json").read_text())["spec"]
    first = 0 if split == "train" else spec["train"]
    labels = assign_labels(spec[split], split, spec["seed"], spec["prevalence"] if split == "train" else 0.0)
    xs, ys, meta = [], [], []
    for r in list_exams(root, split, "sagittal", "acl"):
        vol = load_volume(r.path)
        view, (r0, c0, side) = knee_view(vol)
        _, row, col = acl_index(spec, split, int(r.case), labels[int(r.case) - first])
        xs.append(view)
        ys.append(((row - r0) / side, (col - c0) / side))
        meta.append((r, (r0, c0, side), vol.shape))
    return np.stack(xs).astype(np.float32), np.array(ys, np.float32), meta


class Localiser(nn.Module):
    """Four conv blocks to a 16 x 16 score map; the soft-argmax of it, in fractions of the view's side."""

    def __init__(self):
        super().__init__()
        chans, layers = (1, 16, 32, 64, 64), []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
        self.features, self.score = nn.Sequential(*layers), nn.Conv2d(64, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(self.features(x))[:, 0]
        h, w = s.shape[1:]
        p = s.flatten(1).softmax(1).view_as(s)
        rows = (torch.arange(h, dtype=p.dtype) + 0.5) / h
        cols = (torch.arange(w, dtype=p.dtype) + 0.5) / w
        return torch.stack([(p.sum(2) * rows).sum(1), (p.sum(1) * cols).sum(1)], 1)


def contrast_draw(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image's intensities re-drawn: a random gamma, inverted half of the time, then standardised."""
    n = x.shape[0]
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.7, 0.7, generator=gen))
    x = x.clamp(0, 1) ** gamma
    flip = torch.rand(n, 1, 1, 1, generator=gen) < 0.5
    x = torch.where(flip, 1 - x, x)
    return (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-3)


def standardised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-3)


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> Localiser:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = Localiser()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    steps = epochs * (len(x) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=max(steps, 1))
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - 31, 32):
            b = order[i:i + 32]
            loss = F.l1_loss(net(contrast_draw(xt[b], gen)), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def predict(net: Localiser, x: np.ndarray) -> np.ndarray:
    return net(standardised(torch.from_numpy(x)[:, None])).numpy()


def errors(pred: np.ndarray, y: np.ndarray, meta: list, window: float, prior: np.ndarray) -> dict[str, float]:
    """Error in fractions of the view's side (the larger of row and column); how often the ACL lies inside the
    window centred on the prediction (in stored pixels: window x the field); and the error of always answering
    `prior` (the training exams' mean position), which a localiser must beat to have looked at the image."""
    err = np.abs(pred - y).max(1)
    side = np.array([m[1][2] for m in meta], np.float32)
    field = np.array([m[2][1] for m in meta], np.float32)
    inside = err * side <= window * field / 2
    return {"median_error": float(np.median(err)), "p90_error": float(np.percentile(err, 90)),
            "inside_window": float(inside.mean()), "prior_median_error": float(np.median(np.abs(prior - y).max(1)))}


def write_boxes(net: Localiser, root: Path, out: Path, window: float) -> None:
    """`out`: `root`'s sagittal exams in the generic layout with a roi.csv of predicted boxes (the oracle
    folder's format, oracle_probe.oracle_folder), for `sbssl finetune data.roi=box`: the recipes' slab (the
    central 40% of the knee's slices) and a square of `window` x the field centred on the predicted ACL."""
    for split in ("train", "valid"):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        rows, boxes = [], []
        for r in list_exams(root, split, "sagittal", "acl"):
            vol = load_volume(r.path)
            view, (r0, c0, side) = knee_view(vol)
            (fr, fc), = predict(net, view[None])
            a, b = knee_box(vol).slices
            depth = max(1, round(SLAB * (b - a)))
            z = a + (b - a - depth) // 2
            w = round(window * vol.shape[1])
            y, x = (int(np.clip(round(o + f * side - w / 2), 0, vol.shape[1] - w)) for o, f in ((r0, fr), (c0, fc)))
            link = folder / r.path.name
            if not link.exists():
                link.symlink_to(r.path.resolve())
            rows.append(f"{r.case},{r.label}\n")
            boxes.append(f"{r.case},{x},{y},{z},{w},{w},{depth}\n")
        (folder / "labels.csv").write_text("".join(rows))
        (folder / "roi.csv").write_text("case,x,y,z,height,width,depth\n" + "".join(boxes))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True, help="synthetic family sets to train on (comma-separated)")
    ap.add_argument("--test", required=True, help="synthetic family sets to test on (their valid split)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--window", type=float, default=0.35)
    ap.add_argument("--boxes", nargs=2, action="append", default=[], metavar=("TARGET_ROOT", "OUT"),
                    help="also write TARGET_ROOT with the predicted boxes to OUT (generic layout, roi.csv)")
    ap.add_argument("--name", default="acl_localiser")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    parts = [samples(Path(r), s) for r in a.train.split(",") for s in ("train", "valid")]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    net = train(x, y, a.epochs)
    prior = y.mean(0)
    result = {"train_exams": len(x),
              "train": errors(predict(net, x), y, sum((p[2] for p in parts), []), a.window, prior)}
    for root in map(Path, a.test.split(",")):
        tx, ty, meta = samples(root, "valid")
        name = root.parent.name if root.name == "MRNet-v1.0" else root.name
        result[name] = errors(predict(net, tx), ty, meta, a.window, prior)
        print(name, json.dumps(result[name]), flush=True)
    for target, out in a.boxes:
        write_boxes(net, Path(target), Path(out), a.window)
    if not a.no_record:
        summary = "; ".join(f"{k}: median error {v['median_error']:.3f} (prior {v['prior_median_error']:.3f}), "
                            f"inside {v['inside_window']:.0%}"
                            for k, v in result.items() if isinstance(v, dict))
        record(a.name, result, "python benchmarks/acl_localiser.py " + " ".join(sys.argv[1:]), summary)


if __name__ == "__main__":
    main()
