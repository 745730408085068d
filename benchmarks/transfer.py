"""Transfer: the shipped recipes, unchanged, on knee data they were not chosen on.

For each target (a synthetic family generated here, or any dataset root), the demo's arms run exactly as a user
with a new folder runs them (`sbssl finetune --config finetune/demo --data TARGET ...` with the demo's
overrides, demo.ARMS): GMML from the shipped encoder, the same ViT from random init, the MRNet-style CNN from
random init; plus `own`: `sbssl pretrain --config pretrain/cpu` on the target's own train slices (the paper's
setting), then the demo's GMML recipe from that encoder; `auto`: the demo's recipe with init=auto, as a user runs
it (on a target other than the demo generator's, `own` with the pretraining cropped about the knee as the
classifier is; results named `adapt` came from an earlier init=auto that continued the shipped encoder's GMML on
the target for 8 epochs at lr 1e-3 instead). Each arm is scored
once on the target's valid split; paired differences (stratified bootstrap on the same exams) against random
init and against the CNN.

    python benchmarks/transfer.py --work DIR --families shifted [--data ROOT ...] [--arms gmml,scratch,cnn,own,auto]
                                  [--train 400 --valid 120 --size 256] [--pretrain train.epochs=24]
                                  [--set data.roi=knee] [--encoder varied=ENCODER.safetensors ...]

`--encoder NAME=PATH` adds an arm NAME: the demo's GMML recipe from that encoder (a candidate shipped encoder,
pretrained on selection families), paired against random init, the CNN and the shipped encoder.

Choices are made on selection families (synth/family.py: SELECTION_FAMILIES) and reported on held-out ones;
`--set` applies overrides to every arm (a candidate recipe change), `--pretrain` to the own pretraining only.
Adds a run (named NAME) to results/transfer.json and rewrites RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.demo import ARMS  # noqa: E402
from sbssl.engine.pretrain import pretrain  # noqa: E402
from sbssl.evaluation.report_files import compare_runs, load_metrics  # noqa: E402
from sbssl.synth import SynthSpec, generate  # noqa: E402
from sbssl.utils.rundir import ENCODER, METRICS  # noqa: E402
from sbssl.workflow import finetune  # noqa: E402

PAIRS = (("gmml", "scratch"), ("own", "scratch"), ("auto", "scratch"), ("gmml", "cnn"), ("own", "cnn"),
         ("auto", "cnn"), ("own", "gmml"), ("auto", "gmml"), ("auto", "own"))
# each arm's overrides of finetune/demo (`own` adds its encoder after pretraining; --encoder arms add theirs)
OVERRIDES = {**{k: list(v) for k, v in ARMS.items()}, "auto": ["init=auto"], "own": []}


def target_root(work: Path, family: str, a: argparse.Namespace) -> Path:
    """A synthetic family's set under WORK (generated once; seed 5: no recipe was chosen on it)."""
    root = work / f"data-{family}-{a.size}" / "MRNet-v1.0"
    if not (root / "valid-acl.csv").exists():
        generate(root, SynthSpec(a.train, a.valid, a.size, a.seed, family=family))
    return root


def run_arms(root: Path, work: Path, arms: list[str], common: list[str], pre_args: list[str],
             encoders: dict[str, str] | None = None) -> dict[str, Path]:
    """Each arm's run folder (finished runs are kept: the benchmark resumes)."""
    runs, encoders = {}, encoders or {}
    for arm in [*arms, *encoders]:
        extra = [f"init={encoders[arm]}"] if arm in encoders else OVERRIDES[arm]
        if arm == "own":
            pre = work / "pretrain-own"
            if not (pre / ENCODER).exists():
                t = time.perf_counter()
                pretrain(load_config("pretrain/cpu", [*common, *pre_args]), root, pre)
                print(f"own pretraining: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
            extra = [f"init={pre / ENCODER}"]
        run = work / f"finetune-{arm}"
        if not (run / METRICS).exists():
            t = time.perf_counter()
            finetune(load_config("finetune/demo", [*extra, *common]), root, run)
            print(f"{arm}: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
        runs[arm] = run
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--families", default="shifted", help="synthetic families to generate and test on")
    ap.add_argument("--data", nargs="*", default=[], help="dataset roots to test on as well (MRNet layout)")
    ap.add_argument("--arms", default="gmml,scratch,cnn,own")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--valid", type=int, default=120)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every arm")
    ap.add_argument("--pretrain", nargs="*", default=[], help="overrides for the own pretraining")
    ap.add_argument("--encoder", nargs="*", default=[], metavar="NAME=PATH",
                    help="extra arms: the GMML recipe from these encoders")
    ap.add_argument("--name", default="transfer")
    ap.add_argument("--out-json", help="write the result here instead of results/transfer.json and RESULTS.md")
    a = ap.parse_args()
    work, arms = Path(a.work), [x for x in a.arms.split(",") if x]
    unknown = [x for x in arms if x not in OVERRIDES]
    encoders = dict(e.split("=", 1) for e in a.encoder)
    if unknown or any(not v for v in encoders.values()):
        ap.error(f"unknown arms {unknown} (known: {', '.join(OVERRIDES)}); --encoder takes NAME=PATH")
    pairs = [*PAIRS, *((e, other) for e in encoders for other in ("scratch", "cnn", "gmml"))]
    targets = {f: None for f in a.families.split(",") if f} | {Path(d).name or d: Path(d) for d in a.data}
    result, summary = {}, []
    for name, root in targets.items():
        w = work / name
        root = root or target_root(work, name, a)
        runs = run_arms(root, w, arms, a.set, a.pretrain, encoders)
        row = {arm: {k: load_metrics(run)[k] for k in ("auc", "auc_ci95")} for arm, run in runs.items()}
        for x, y in pairs:
            if x in runs and y in runs:
                d = compare_runs(runs[x], runs[y], w / f"compare-{x}-{y}")
                row[f"{x}-{y}"] = {"diff": d["difference"], "ci95": d["ci95"]}
        result[name] = row
        cells = [f"{k} {v['auc']:.3f} [{v['auc_ci95'][0]:.3f}, {v['auc_ci95'][1]:.3f}]" if "auc" in v else
                 f"{k} {v['diff']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" for k, v in row.items()]
        summary.append(f"{name}: " + "; ".join(cells))
        print(summary[-1], flush=True)
    res = {"targets": result, "set": a.set, "pretrain": a.pretrain, "encoders": encoders}
    if a.out_json:
        Path(a.out_json).write_text(json.dumps(res, indent=2) + "\n")
    else:
        record(a.name, res, "python benchmarks/transfer.py " + " ".join(sys.argv[1:]), " | ".join(summary))


if __name__ == "__main__":
    main()
