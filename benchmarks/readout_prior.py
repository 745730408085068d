"""The read-out's solver and prior (`finetune.probe_solver`, `finetune.probe_l2`) and the block it reads, chosen
on a *selection* set: the product's own probe (recalibrated stem, feature table, `engine.probe.fit_readout` with
finetune/demo's steps and lr) fitted on n labelled train exams and scored on that set's valid split.

    python benchmarks/readout_prior.py --data SELECTION_ROOT [--encoders builtin:cpu,RUN] [--labels 50,100,160]
                                       [--solvers lbfgs,adamw] [--l2 0,3,10,30,100] [--restarts 1,8]
                                       [--blocks 12]
                                       [--seeds 0,1,2] [--name readout_prior]

Run it on a set made for choosing (the learnability set: `sbssl synth ... --seed 3`), never on the demo's
(seed 0) or the label-efficiency set (seed 2), whose valid splits report results. Each fit uses the exams that
`sbssl finetune finetune.labels=n train.seed=s train.epochs=0` fits on (the whole labelled subset: a read-out
alone holds nothing out). One difference from a fine-tuning run, for speed: the stem's batch-norm statistics are
re-estimated once on all train exams rather than on each subset. --blocks k reads the tokens after the encoder's
first k blocks (its final norm applied), to see where in depth the masked-image-modelling features hold the
finding.
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.data.cache import slice_cache_for  # noqa: E402
from sbssl.engine.finetune import heldout_auc, heldout_probs, recalibrate_batch_norm  # noqa: E402
from sbssl.engine.inference import slice_feature_table  # noqa: E402
from sbssl.engine.probe import fit_readout  # noqa: E402
from sbssl.engine.sampling import labelled_subset  # noqa: E402
from sbssl.models.build import build_classifier  # noqa: E402
from sbssl.models.encoder_file import encoder_init  # noqa: E402

STEPS = {"adamw": 600}  # the AdamW read-out of sessions 3-5 (finetune/demo's steps are L-BFGS iterations now)


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def frozen_model(encoder: str, blocks: int):
    """finetune/demo's classifier on `encoder`, cut after `blocks` blocks, in eval mode; its config and input
    preprocessing."""
    init = encoder_init(encoder)
    cfg = init.configure(load_config("finetune/demo", [f"init={encoder}"]))
    torch.manual_seed(0)
    model = build_classifier(cfg, init)
    model.encoder.blocks = model.encoder.blocks[:blocks]
    return model, cfg, init.preprocessing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the selection set (MRNet layout)")
    ap.add_argument("--encoders", default="builtin:cpu")
    ap.add_argument("--labels", default="50,100,160")
    ap.add_argument("--solvers", default="lbfgs", help="finetune.probe_solver values")
    ap.add_argument("--l2", default="0,3,10,30,100", help="finetune.probe_l2 values")
    ap.add_argument("--restarts", default="8", help="finetune.probe_restarts values (lbfgs)")
    ap.add_argument("--blocks", default="12", help="read the tokens after this many blocks")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--keep-bn", action="store_true",
                    help="keep the encoder's batch-norm statistics (no re-estimation on the set's clean slices)")
    ap.add_argument("--name", default="readout_prior")
    a = ap.parse_args()
    t0, root, rows = time.perf_counter(), Path(a.data), []
    for encoder in a.encoders.split(","):
        for k in ints(a.blocks):
            model, cfg, pre = frozen_model(encoder, k)
            tables, caches, labels = {}, {}, {}
            for split in ("train", "valid"):
                caches[split], recs = slice_cache_for(cfg, root, split)
                labels[split] = np.array([r.label for r in recs])
            if not a.keep_bn:
                recalibrate_batch_norm(model, caches["train"], np.arange(len(labels["train"])), pre, "cpu")
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                for split in caches:
                    tables[split] = slice_feature_table(model, caches[split], np.arange(len(labels[split])), pre,
                                                        "cpu")
            first = {n: v.clone() for n, v in model.state_dict().items()}
            y, yv = labels["train"], labels["valid"]
            for n, solver, l2, restarts in product(ints(a.labels), a.solvers.split(","),
                                                   [float(v) for v in a.l2.split(",")], ints(a.restarts)):
                steps = STEPS.get(solver, cfg.finetune.probe_steps)
                aucs = []
                for seed in ints(a.seeds):
                    model.load_state_dict(first)
                    fit_readout(model, tables["train"], caches["train"], y, labelled_subset(y, n, seed), steps,
                                cfg.finetune.probe_lr, cfg.finetune.probe_batch_exams, seed, cfg.finetune.oversample,
                                l2, solver, restarts)
                    model.eval()
                    aucs.append(heldout_auc(yv, heldout_probs(model, model, caches["valid"], np.arange(len(yv)),
                                                              pre, 64, "cpu", tables["valid"])))
                rows.append({"encoder": encoder, "blocks": k, "labels": n, "solver": solver, "steps": steps,
                             "restarts": restarts, "l2": l2, "auc": aucs})
                print(f"{encoder} blocks {k:2d} n={n:4d} {solver} ({steps} x {restarts}) l2={l2:6g} AUC "
                      f"{np.mean(aucs):.3f} ("
                      + " / ".join(f"{v:.3f}" for v in aucs) + f")  {time.perf_counter() - t0:.0f} s", flush=True)
    summary = "; ".join(f"{r['encoder']} k={r['blocks']} n={r['labels']} {r['solver']} x{r['restarts']} l2={r['l2']:g} "
                        f"{np.mean(r['auc']):.3f}" for r in rows)
    record(a.name, {"data": str(root), "rows": rows, "seconds": time.perf_counter() - t0},
           "python " + " ".join(sys.argv), summary)


if __name__ == "__main__":
    main()
