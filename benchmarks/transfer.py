"""Transfer: the shipped recipes, unchanged, on knee data they were not chosen on.

For each target (a synthetic family generated here, or any dataset root), the demo's arms run exactly as a user
with a new folder runs them (`sbssl finetune --config finetune/demo --data TARGET ...` with the demo's
overrides, demo.ARMS): GMML from the shipped encoder, the same ViT from random init, the MRNet-style CNN from
random init; plus `own`: `sbssl pretrain --config pretrain/cpu` on the target's own train slices (the paper's
setting), then the demo's GMML recipe from that encoder; `auto`: the demo's recipe with init=auto, as a user runs
it (on a target other than the demo generator's, `own`: pretrain/cpu on the classifier's own region, since
2026-12-06 the ACL's window; results named `adapt` came from an earlier init=auto that continued the shipped
encoder's GMML on the target for 8 epochs at lr 1e-3 instead). Each arm is scored
once on the target's valid split; paired differences (stratified bootstrap on the same exams) against random
init and against the CNN.

    python benchmarks/transfer.py --work DIR --families shifted [--data ROOT ...] [--arms gmml,scratch,cnn,own,auto]
                                  [--train 400 --valid 120 --size 256] [--pretrain train.epochs=24]
                                  [--set data.roi=knee] [--encoder varied=ENCODER.safetensors ...] [--seeds 0,1,2]
                                  [--variant dp0 model.drop_path=0 ...] [--variant cnn5:cnn finetune.ensemble=5]

`--seeds` trains every arm at each training seed (train.seed: the held-out fifth that picks the epoch, the
members' seeds, the batch order) and averages each paired difference over them. At CPU scale one recipe at two
seeds can differ by more than the bootstrap interval over valid exams (clinic: 0.677 vs 0.499), so a recipe is
chosen by the seed-averaged difference's two-level interval (`ci95`: seeds, then exams, resampled); `ci95_exams`
holds the exams' noise alone. The own pretraining runs once per target.

`--encoder NAME=PATH` adds an arm NAME: the demo's GMML recipe from that encoder (a candidate shipped encoder,
pretrained on selection families), paired against random init, the CNN, the shipped encoder and the extra arms
named before it. The candidate is judged as it would ship: rounded to half precision first (WORK/candidates/),
as `python -m sbssl.weights export` stores it. `--variant NAME KEY=VALUE ...` adds an arm NAME: the GMML arm with
those overrides (a candidate recipe change), paired likewise; `--variant NAME:ARM ...` starts from another
shipped arm's overrides instead (e.g. `cnn5:cnn finetune.ensemble=5`: the CNN given what a GMML candidate is
given, so that the candidate's gain is not read as pretraining's).

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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.demo import ARMS  # noqa: E402
from sbssl.engine.pretrain import pretrain  # noqa: E402
from sbssl.evaluation.report_files import load_metrics, paired_runs_over_seeds  # noqa: E402
from sbssl.synth import SynthSpec, generate  # noqa: E402
from sbssl.utils.rundir import ENCODER, METRICS  # noqa: E402
from sbssl.weights import shipped_copy  # noqa: E402
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


def run_folder(work: Path, arm: str, seed: int | None) -> Path:
    """Seed 0 (or no --seeds) keeps the name runs had before --seeds, so earlier work folders resume."""
    return work / (f"finetune-{arm}" if not seed else f"finetune-{arm}-seed{seed}")


def run_arms(root: Path, work: Path, arms: list[str], common: list[str], pre_args: list[str],
             extra_arms: dict[str, list[str]] | None = None, seeds: list[int] | None = None
             ) -> dict[str, list[Path]]:
    """Each arm's run folders, one per training seed (finished runs are kept: the benchmark resumes); extra_arms
    maps more arms to their overrides of finetune/demo. The own pretraining runs once: the seeds vary the
    fine-tuning (held-out fifth, members, batch order)."""
    runs, extra_arms = {}, extra_arms or {}
    for arm in [*arms, *extra_arms]:
        extra = extra_arms.get(arm, OVERRIDES.get(arm))
        if arm == "own":
            pre = work / "pretrain-own"
            if not (pre / ENCODER).exists():
                t = time.perf_counter()
                # as init=auto pretrains (workflow.own_pretraining_config): on the classifier's own region
                region = load_config("finetune/demo", common).data
                own = [f"data.roi={region.roi}", f"data.crop={region.crop}", f"data.slab={region.slab}"]
                pretrain(load_config("pretrain/cpu", [*own, *common, *pre_args]), root, pre)
                print(f"own pretraining: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
            extra = [f"init={pre / ENCODER}"]
        runs[arm] = []
        for seed in seeds or [None]:
            run = run_folder(work, arm, seed)
            if not (run / METRICS).exists():
                t = time.perf_counter()
                seeded = [] if seed is None else [f"train.seed={seed}"]
                finetune(load_config("finetune/demo", [*extra, *common, *seeded]), root, run)
                print(f"{arm} (seed {seed or 0}): {(time.perf_counter() - t) / 60:.1f} min", flush=True)
            runs[arm].append(run)
    return runs


def target_row(runs: dict[str, list[Path]], pairs: list[tuple[str, str]]) -> dict:
    """Each arm's valid AUC (its mean over seeds, with every seed's) and each pair's seed-averaged paired
    difference: `ci95` resamples seeds and exams, `ci95_exams` the exams only (metrics.seed_averaged_difference);
    with one seed both are the plain paired bootstrap."""
    row = {}
    for arm, folders in runs.items():
        m = [load_metrics(f) for f in folders]
        row[arm] = {"auc": float(np.mean([x["auc"] for x in m]))}
        row[arm] |= {"auc_ci95": m[0]["auc_ci95"]} if len(m) == 1 else {"auc_per_seed": [x["auc"] for x in m]}
    for x, y in pairs:
        if x in runs and y in runs:
            d = paired_runs_over_seeds(runs[x], runs[y])
            row[f"{x}-{y}"] = {"diff": d["difference"], **{k: d[k] for k in ("ci95", "ci95_exams", "per_seed")}}
    return row


def summary_cell(key: str, v: dict) -> str:
    if "diff" not in v:
        spread = (f" [{v['auc_ci95'][0]:.3f}, {v['auc_ci95'][1]:.3f}]" if "auc_ci95" in v else
                  " (seeds " + ", ".join(f"{a:.3f}" for a in v["auc_per_seed"]) + ")")
        return f"{key} {v['auc']:.3f}{spread}"
    seeds = "" if len(v["per_seed"]) == 1 else " (seeds " + ", ".join(f"{a:+.3f}" for a in v["per_seed"]) + ")"
    return f"{key} {v['diff']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]{seeds}"


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
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                    help="an extra arm NAME: the GMML arm with these overrides (a candidate recipe change), paired "
                         "with it; repeat for more")
    ap.add_argument("--seeds", help="training seeds, e.g. 0,1,2: every arm at each; differences averaged over them")
    ap.add_argument("--name", default="transfer")
    ap.add_argument("--out-json", help="write the result here instead of results/transfer.json and RESULTS.md")
    a = ap.parse_args()
    work, arms = Path(a.work), [x for x in a.arms.split(",") if x]
    unknown = [x for x in arms if x not in OVERRIDES]
    encoders = dict(e.split("=", 1) for e in a.encoder)
    bases = [v[0].partition(":")[2] or "gmml" for v in a.variant]  # NAME:ARM starts from ARM's overrides
    variants = {v[0].partition(":")[0]: [*OVERRIDES.get(b, []), *v[1:]] for v, b in zip(a.variant, bases, strict=True)}
    missing = [p for p in encoders.values() if not Path(p).is_file()]
    if missing:
        ap.error(f"--encoder: {missing[0] or 'PATH'}: no such encoder file")
    if (unknown or any(len(v) < 2 or "=" in v[0] for v in a.variant) or any(b not in ARMS for b in bases)):
        ap.error(f"unknown arms {unknown} (known: {', '.join(OVERRIDES)}); --encoder takes NAME=PATH, "
                 f"--variant NAME[:ARM] KEY=VALUE ... with ARM one of {', '.join(ARMS)}")
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else None
    if seeds and any(o.startswith("train.seed=") for o in a.set):
        ap.error("--seeds sets train.seed: leave it out of --set")
    # a candidate is judged as it would ship (half precision): the rounding alone moves one seed by 0.02 AUC
    shipped = {e: shipped_copy(Path(p), work / "candidates" / f"{e}.safetensors") for e, p in encoders.items()}
    extra_arms = {**{e: [f"init={p}"] for e, p in shipped.items()}, **variants}
    extra = list(extra_arms)  # each extra arm against the shipped arms, and against the extra arms before it
    pairs = [*PAIRS, *((e, other) for i, e in enumerate(extra) for other in ("gmml", "scratch", "cnn", *extra[:i]))]
    targets = {f: None for f in a.families.split(",") if f} | {Path(d).name or d: Path(d) for d in a.data}
    result, summary = {}, []
    for name, root in targets.items():
        root = root or target_root(work, name, a)
        runs = run_arms(root, work / name, arms, a.set, a.pretrain, extra_arms, seeds)
        result[name] = target_row(runs, pairs)
        summary.append(f"{name}: " + "; ".join(summary_cell(k, v) for k, v in result[name].items()))
        print(summary[-1], flush=True)
    res = {"targets": result, "set": a.set, "pretrain": a.pretrain, "encoders": encoders, "variants": variants,
           "seeds": seeds}
    if a.out_json:
        Path(a.out_json).write_text(json.dumps(res, indent=2) + "\n")
    else:
        record(a.name, res, "python benchmarks/transfer.py " + " ".join(sys.argv[1:]), " | ".join(summary))


if __name__ == "__main__":
    main()
