"""Where the GMML features hold the tear: read-outs of a *frozen* encoder's tokens, pretrained vs random.

    python benchmarks/token_probe.py --data ROOT [--encoder builtin:cpu] [--labels 100,200,0] [--seeds 0,1,2]
                                     [--plane sagittal] [--no-random] [--roi acl --crop 0.35] [--within sag_sequence]
                                     [--img-size 48]
                                     [--name token_probe]

Every exam's slices (the encoder's region of interest, 8 evenly spaced) go once through the frozen encoder; then
two read-outs are fitted on n labelled train exams (stratified, nested subsets as in label_efficiency.py) and
scored on valid:
- pooled: the max over patch tokens and slices (the classifier's `max` slice feature), standardised, logistic
  regression (C = 0.01, class-balanced);
- tokens: a linear score per standardised patch token, the exam's score a smooth max of all of them
  (log-mean-exp, sharpness 4: `finetune.aggregator=instance`), trained full-batch (AdamW 1e-2, 600 steps,
  positives weighted to balance).
Both read-outs on the same encoder with random weights are the control. Adds a run to results/token_probe.json and
rewrites RESULTS.md. No held-out selection happens (fixed recipe), so valid is looked at once per fit.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from timm.layers import resample_abs_pos_embed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402
from member_findings import auc_or_nan, read_findings  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.data.cache import slice_cache_for  # noqa: E402
from sbssl.data.datasets import gather_exams  # noqa: E402
from sbssl.data.preprocessing import Preprocessing  # noqa: E402
from sbssl.engine.sampling import labelled_subset  # noqa: E402
from sbssl.evaluation.metrics import auc_with_ci  # noqa: E402
from sbssl.models.build import build_encoder  # noqa: E402
from sbssl.models.encoder_file import encoder_init  # noqa: E402
from sbssl.models.gmml import skip_indices  # noqa: E402
from sbssl.models.vit import block_outputs  # noqa: E402

SLICES, SHARPNESS = 8, 4.0


@torch.no_grad()
def tokens(enc, cfg, pre: Preprocessing, root: Path, split: str, features: str = "final"
           ) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """(exams, slices * patches, D) normed patch tokens, the labels and the cases. features="final": the last block's
    (what a classifier reads); "skip": the mean of the GMML skip blocks (what the pretraining decoder reads)."""
    cache, recs = slice_cache_for(cfg, root, split)
    skip = skip_indices([6, 8, 10, 12], len(enc.blocks))
    out = []
    for s in range(0, len(recs), 32):
        x, _ = gather_exams(cache, np.arange(s, min(s + 32, len(recs))), SLICES)
        x = pre.normalise(x)
        t = (enc.forward_features(x) if features == "final"
             else enc.norm(torch.stack(block_outputs(enc, x, skip)).mean(0)))[:, enc.num_prefix_tokens:]
        out.append(t.reshape(-1, SLICES * t.shape[1], t.shape[2]))
    return torch.cat(out), np.array([r.label for r in recs]), [r.case for r in recs]


def load_resized(init, enc) -> None:
    """The encoder's weights into `enc`, its position embeddings resampled to `enc`'s grid (bicubic, as timm does
    when a ViT is fine-tuned at another resolution)."""
    w = dict(init.weights)
    grid = enc.patch_embed.grid_size
    w["pos_embed"] = resample_abs_pos_embed(w["pos_embed"].float(), list(grid), num_prefix_tokens=enc.num_prefix_tokens)
    enc.load_state_dict(w)


def within(root: Path, cases: list[str], knob: str | None) -> np.ndarray:
    """Each valid exam's value of a generator knob (findings/valid.csv), or one group when none is asked."""
    if not knob:
        return np.array([""] * len(cases))
    findings = read_findings(root)
    return np.array([findings[c][knob] for c in cases])


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    flat = train.reshape(-1, train.shape[-1])
    mu, sd = flat.mean(0), flat.std(0) + 1e-6
    return [(t - mu) / sd for t in (train, *others)]


def pooled_readout(tr, ytr, va) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    a, b = standardise(tr.amax(1), va.amax(1))
    return LogisticRegression(C=0.01, max_iter=3000, class_weight="balanced").fit(a, ytr).decision_function(b)


def token_readout(tr, ytr, va, steps: int = 600) -> np.ndarray:
    a, b = standardise(tr, va)
    torch.manual_seed(0)
    score = torch.nn.Linear(a.shape[-1], 1)
    opt = torch.optim.AdamW(score.parameters(), 1e-2, weight_decay=1e-2)
    y = torch.tensor(ytr, dtype=torch.float32)

    def exam(t):
        return (torch.logsumexp(SHARPNESS * score(t)[..., 0], 1) - np.log(t.shape[1])) / SHARPNESS

    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(exam(a), y, pos_weight=(1 - y).sum() / y.sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return exam(b).numpy()


def probe_region(init, plane: str, roi: str | None = None, crop: float | None = None, img_size: int | None = None
                 ) -> tuple[DictConfig, Preprocessing]:
    """The config and record the probe reads exams with: the encoder's own, or its weights read on another region
    (roi, crop: e.g. the ACL's window of finetune/demo) or at another scale (img_size: more pixels per mm, the
    encoder's grid of positions resized)."""
    cfg = init.configure(load_config("finetune/cpu", ["data.task=acl", f"data.plane={plane}"]))
    pre = init.preprocessing
    for key, value in (("roi", roi), ("crop", crop), ("img_size", img_size)):
        if value:
            cfg.data[key], pre = value, replace(pre, **{key: value})
    cfg.data.roi = pre.roi
    return cfg, pre


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an MRNet-layout set")
    ap.add_argument("--encoder", default="builtin:cpu")
    ap.add_argument("--labels", default="100,200,0", help="labelled train exams; 0 = all")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--plane", default="sagittal")
    ap.add_argument("--no-random", action="store_true", help="skip the random-weights control")
    ap.add_argument("--features", default="final", choices=("final", "skip"),
                    help="final block's tokens, or the mean of the GMML skip blocks (the decoder's input)")
    ap.add_argument("--roi", help="the region of interest (data.roi: center, knee, acl); default: the encoder's record")
    ap.add_argument("--crop", type=float, help="the region's size (data.crop) instead of the encoder's record; "
                    "with --roi acl the window about the ligament (finetune/demo: 0.35)")
    ap.add_argument("--img-size", type=int, help="read the region at this size instead of the encoder's own")
    ap.add_argument("--within", help="also the AUC within each value of this knob of a synthetic set's "
                    "findings/valid.csv (e.g. sag_sequence)")
    ap.add_argument("--name", default="token_probe", help="results/NAME.json")
    a = ap.parse_args()
    t0, root = time.perf_counter(), Path(a.data)
    init = encoder_init(a.encoder)
    cfg, pre = probe_region(init, a.plane, a.roi, a.crop, a.img_size)
    rows = []
    for weights in ("gmml",) if a.no_random else ("gmml", "random"):
        torch.manual_seed(0)
        enc = build_encoder(cfg).eval()
        if weights == "gmml":
            load_resized(init, enc)
        tr, ytr, _ = tokens(enc, cfg, pre, root, "train", a.features)
        va, yva, cases = tokens(enc, cfg, pre, root, "valid", a.features)
        groups = within(root, cases, a.within)
        for n in [int(v) for v in a.labels.split(",")]:
            for readout, fit in (("pooled", pooled_readout), ("tokens", token_readout)):
                aucs, by_group = [], {}
                for seed in [int(s) for s in a.seeds.split(",")] if 0 < n < len(ytr) else [0]:
                    idx = labelled_subset(ytr, n, seed)
                    s = fit(tr[idx], ytr[idx], va)
                    aucs.append(auc_with_ci(yva, s, seed=0))
                    for g in sorted(set(groups)):
                        by_group.setdefault(g, []).append(auc_or_nan(yva[groups == g], s[groups == g]))
                row = {"encoder": weights, "readout": readout, "labels": n or len(ytr),
                       "auc": [r[0] for r in aucs], "auc_ci95": [r[1] for r in aucs],
                       **({"within": {str(g): v for g, v in by_group.items()}} if a.within else {})}
                rows.append(row)
                print(f"{weights:6s} {readout:6s} n={row['labels']:5d} AUC " +
                      " / ".join(f"{v:.3f}" for v in row["auc"]) + f"  ({time.perf_counter() - t0:.0f} s)" +
                      "".join(f"  {g} {np.mean(v):.3f}" for g, v in by_group.items()), flush=True)
    summary = "; ".join(f"{r['encoder']} {r['readout']} n={r['labels']} {np.mean(r['auc']):.3f}" for r in rows)
    record(a.name, {"data": str(root), "encoder": a.encoder, "plane": a.plane, "features": a.features, "rows": rows,
                           "seconds": time.perf_counter() - t0}, "python " + " ".join(sys.argv), summary)


if __name__ == "__main__":
    main()
