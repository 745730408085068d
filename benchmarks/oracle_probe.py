"""Can a model read the ACL itself? An oracle probe: the slice through the ligament, a window centred on it.

On a synthetic set the generator knows where every ACL is. This re-derives, for each exam, the stored sagittal
slice and pixel nearest the ligament's midpoint (the knee, its acquisition grid and the sagittal draws replayed
from the set's seed without rendering; a family's smooth deformation, a few mm, is ignored), cuts the three
slices about it and a square window centred on it (`--window`: its side as a fraction of the field), resized
to 32 px as the recipes' inputs are, and asks each arm for the exam's label from those three slices (smooth max
over slices and positions). No search for the ligament is left to the model: what fails here fails for want of
seeing the tear, not of finding it. AUC on valid overall and within each sequence (`findings/valid.csv`).

Arms: `cnn` (the MRNet-style CNN, random init) and `vit` (ViT-T/4, conv stem, random init, a linear score per
token), trained for a fixed number of epochs (no epoch is chosen on valid); `NAME=ENCODER` fine-tunes that GMML
encoder the same way, and `frozen:NAME` scores its frozen tokens with a logistic regression (the mean and max
over tokens and slices; `frozen:random` is a random ViT's). A diagnosis, never a results-table number.

usage: python benchmarks/oracle_probe.py --data ROOT [--window 0.35 (0: the recipes' region)] [--epochs 30]
                                         [--arms cnn,vit,frozen:random] [--encoder NAME=PATH ...] [--name NAME]
                                         [--no-record]
       python benchmarks/oracle_probe.py --data ROOT --window 0.35 --oracle-folder OUT   (then data.roi=box on OUT)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import record
from member_findings import auc_or_nan, read_findings
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sbssl.data.layout import list_exams
from sbssl.data.localise import knee_region
from sbssl.data.prepare import resize_slices, robust_minmax
from sbssl.data.volume_io import load_volume
from sbssl.models.encoder_file import encoder_init
from sbssl.models.slice_classifier import MRNetCNN
from sbssl.models.vit import create_encoder
from sbssl.synth.dataset import assign_labels
from sbssl.synth.landmarks import replayed_acl_midpoint

SIZE, CROP, SLAB = 32, 0.5, 0.4  # the region about the knee (data.roi=knee), finetune/demo's input before data.roi=acl


def oracle_crop(vol: np.ndarray, at: np.ndarray, window: float) -> np.ndarray:
    """The three slices about `at`, 32 px: a square of `window` x the field centred on it (zero outside), or
    with window 0 the recipes' own in-plane region about the knee (data.roi=knee, crop 0.5)."""
    s = int(np.clip(round(at[0]), 1, len(vol) - 2))
    x = robust_minmax(vol[s - 1:s + 2])
    if window <= 0:
        _, rows, cols = knee_region(vol, CROP, SLAB)
        return resize_slices(x[:, rows, cols], SIZE)
    half = round(window * vol.shape[1] / 2)
    r, c = round(at[1]), round(at[2])
    x = np.pad(x, ((0, 0), (half, half), (half, half)))
    return resize_slices(x[:, r:r + 2 * half, c:c + 2 * half], SIZE)


def slice_miss(vol: np.ndarray, at: np.ndarray) -> float:
    """How far (in slices) the ACL's midpoint lies from the nearest of the recipes' 8 slices (the central 40%
    of the knee's slices, evenly spaced: data/localise.py, data/datasets.py)."""
    slab = knee_region(vol, CROP, SLAB)[0]
    picked = slab.start + np.round(np.linspace(0, 1, 8) * (slab.stop - slab.start - 1))
    return float(np.abs(picked - at[0]).min())


def load_split(root: Path, split: str, window: float) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    spec = json.loads((root / "findings" / "synth.json").read_text())["spec"]
    if spec.get("family") in (None, "demo"):
        raise SystemExit(f"{root}: the oracle replays a family's draws; the demo generator's set has none")
    records = list_exams(root, split, "sagittal", "acl")
    first = 0 if split == "train" else spec["train"]
    labels = assign_labels(spec["train" if split == "train" else "valid"], split, spec["seed"], spec["prevalence"]
                           if split == "train" else 0.0)
    xs, miss = [], []
    for r in records:
        vol = load_volume(r.path)
        at = replayed_acl_midpoint(spec, int(r.case), labels[int(r.case) - first])
        xs.append(oracle_crop(vol, at, window))
        miss.append(slice_miss(vol, at))
    return (np.stack(xs).astype(np.float32), np.array([r.label for r in records]), [r.case for r in records],
            np.array(miss))


def oracle_folder(root: Path, out: Path, window: float, depth: int = 7) -> None:
    """`out`: the set's sagittal exams in the generic layout (links to the volumes, labels.csv) with a roi.csv of
    oracle boxes: `depth` slices and a square of `window` x the field centred on each ACL. `sbssl finetune
    data.roi=box` on it is the whole pipeline with a perfect localiser: an upper bound for one."""
    spec = json.loads((root / "findings" / "synth.json").read_text())["spec"]
    for split, first in (("train", 0), ("valid", spec["train"])):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        labels = assign_labels(spec[split], split, spec["seed"], spec["prevalence"] if split == "train" else 0.0)
        rows, boxes = [], []
        for r in list_exams(root, split, "sagittal", "acl"):
            vol = np.load(r.path, mmap_mode="r")
            s, row, col = replayed_acl_midpoint(spec, int(r.case), labels[int(r.case) - first])
            side = round(window * vol.shape[1])
            z = int(np.clip(round(s) - depth // 2, 0, max(len(vol) - depth, 0)))
            y, x = (int(np.clip(round(v - side / 2), 0, vol.shape[1] - side)) for v in (row, col))
            link = folder / r.path.name
            if not link.exists():
                link.symlink_to(r.path.resolve())
            rows.append(f"{r.case},{r.label}\n")
            boxes.append(f"{r.case},{x},{y},{z},{side},{side},{min(depth, len(vol))}\n")
        (folder / "labels.csv").write_text("".join(rows))
        (folder / "roi.csv").write_text("case,x,y,z,height,width,depth\n" + "".join(boxes))


class TokenScorer(torch.nn.Module):
    """An encoder's tokens (or a CNN's map) scored one by one, a smooth max over positions and slices."""

    def __init__(self, encoder: torch.nn.Module, dim: int, cnn: bool):
        super().__init__()
        self.encoder, self.head, self.cnn = encoder, torch.nn.Linear(dim, 1), cnn

    def tokens(self, x: torch.Tensor) -> torch.Tensor:  # (B * 3, 1, H, W) -> (B * 3, N, D)
        if self.cnn:
            return self.encoder.features(x).flatten(2).transpose(1, 2)
        return self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        scores = self.head(self.tokens(x.reshape(-1, 1, SIZE, SIZE))).reshape(b, -1)
        return torch.logsumexp(scores, 1) - np.log(scores.shape[1])


def vit(init: str | None) -> tuple[torch.nn.Module, dict]:
    """ViT-T/4 with the conv stem (the CPU recipes' encoder), random or from a GMML encoder file; its input
    statistics (the encoder's own, or None: this set's)."""
    enc = create_encoder("vit_tiny", SIZE, 4, 1, 0.1, "conv")
    if init is None:
        return enc, {}
    e = encoder_init(init)
    e.load_into(enc)
    return enc, {"mean": e.preprocessing.mean, "std": e.preprocessing.std}


def train(model: TokenScorer, x: torch.Tensor, y: np.ndarray, epochs: int, lr: float, seed: int) -> None:
    """Adam, class-balanced batches of 16 exams, a fixed number of epochs."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.05)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    yt = torch.from_numpy(y).float()
    model.train()
    for _ in range(epochs):
        order = rng.permutation(np.concatenate([neg, rng.choice(pos, len(neg))]))
        for i in range(0, len(order) - 15, 16):
            b = order[i:i + 16]
            loss = F.binary_cross_entropy_with_logits(model(x[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def scores_of(model: TokenScorer, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)]).numpy()


@torch.no_grad()
def frozen_features(model: TokenScorer, x: torch.Tensor) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(x), 64):
        t = model.tokens(x[i:i + 64].reshape(-1, 1, SIZE, SIZE)).reshape(-1, 3 * 64, model.head.in_features)
        out.append(torch.cat([t.mean(1), t.amax(1)], 1))
    return torch.cat(out).numpy()


def run_arm(arm: str, encoders: dict[str, str], data: dict, epochs: int, seed: int) -> np.ndarray:
    """Valid scores of one arm."""
    torch.manual_seed(seed)
    frozen = arm.startswith("frozen:")
    name = arm.removeprefix("frozen:")
    if name == "cnn":
        model, stats = TokenScorer(MRNetCNN(1, SIZE), 256, cnn=True), {}
    else:
        enc, stats = vit(None if name in ("vit", "random") else encoders[name])
        model = TokenScorer(enc, enc.embed_dim, cnn=False)
    mean, std = stats.get("mean", data["mean"]), stats.get("std", data["std"])
    xtr, xva = ((torch.from_numpy(data[k]) - mean) / std for k in ("xtr", "xva"))
    if frozen:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        clf.fit(frozen_features(model, xtr), data["ytr"])
        return clf.decision_function(frozen_features(model, xva))
    train(model, xtr, data["ytr"], epochs, 1e-3 if name == "cnn" else 3e-4, seed)
    return scores_of(model, xva)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--window", type=float, default=0.35, help="the window's side as a fraction of the field; 0: "
                    "the recipes' region about the knee")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--arms", default="cnn,vit,frozen:random")
    ap.add_argument("--encoder", nargs="*", default=[], metavar="NAME=PATH",
                    help="GMML encoders (a run, its encoder.safetensors or builtin:cpu): arm NAME fine-tunes it, arm "
                         "frozen:NAME reads its frozen tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--within", default="sag_sequence")
    ap.add_argument("--name", default="oracle_probe")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--oracle-folder", metavar="OUT", help="only write the set with oracle ROI boxes to OUT "
                    "(a window of --window x the field, 7 slices) for `sbssl finetune data.roi=box`")
    a = ap.parse_args()
    if a.oracle_folder:
        return oracle_folder(Path(a.data), Path(a.oracle_folder), a.window)
    root, encoders = Path(a.data), dict(e.split("=", 1) for e in a.encoder)
    xtr, ytr, _, _ = load_split(root, "train", a.window)
    xva, yva, cases, miss = load_split(root, "valid", a.window)
    data = {"xtr": xtr, "ytr": ytr, "xva": xva, "mean": float(xtr.mean()), "std": float(xtr.std())}
    groups = np.array([read_findings(root)[c][a.within] for c in cases])
    print(f"train {xtr.shape} ({int(ytr.sum())} tears), valid {xva.shape} ({int(yva.sum())} tears)", flush=True)
    coverage = {"slice_miss_median": float(np.median(miss)), "slice_miss_over_1": float(np.mean(miss > 1))}
    print("the recipes' 8 slices, distance to the ACL's midpoint:", json.dumps(coverage), flush=True)
    result = {}
    for arm in [x for x in a.arms.split(",") if x]:
        s = run_arm(arm, encoders, data, a.epochs, a.seed)
        result[arm] = {"auc": auc_or_nan(yva, s),
                       **{str(g): auc_or_nan(yva[groups == g], s[groups == g]) for g in sorted(set(groups))}}
        print(arm, json.dumps({k: round(v, 3) for k, v in result[arm].items()}), flush=True)
    if not a.no_record:
        summary = "; ".join(f"{k} " + ", ".join(f"{g} {v:.3f}" for g, v in r.items()) for k, r in result.items())
        record(a.name, {"window": a.window, "epochs": a.epochs, "coverage": coverage, "arms": result},
               "python benchmarks/oracle_probe.py " + " ".join(sys.argv[1:]), summary)


if __name__ == "__main__":
    main()
