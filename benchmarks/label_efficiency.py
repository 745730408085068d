"""Label efficiency: ACL AUC of GMML fine-tuning, GMML linear probing, frozen token scoring (GMML and random
encoders), LP-FT (that token read-out fitted first, then everything fine-tuned) and random init as the number of
labelled exams grows, over several subset seeds -- the curve that says how many exams to label.

    python benchmarks/label_efficiency.py [--data ROOT] [--encoder builtin:cpu|RUN] [--labels 25,50,100,200,0]
                                          [--seeds 0,1,2] [--steps 80]

Without --data a synthetic set is generated (--train/--valid/--size/--difficulty, seed 2: neither the shipped
encoder's archive, seed 1, nor the demo's, seed 0). Every point fine-tunes the CPU recipe (finetune/cpu, one
member) on a stratified subset of n train exams (`finetune.labels=n`, nested per seed: the 50 contain the 25),
chooses its epoch on a stratified fifth of that subset and is scored on the whole valid split. Every run gets about
the same number of optimiser steps (--steps; more epochs for fewer exams), so a small subset is not also
undertrained. Every arm looks at finetune/demo's region of interest (about the ACL since 2026-12-06; the tables in
docs/results.md were measured about the knee, data.roi=knee). The GMML - scratch difference
at each n is averaged over seeds; its interval comes from the same paired stratified bootstrap resamples of the
valid exams applied to every seed's pair, so it holds the valid-set noise, and the spread over seeds is reported
beside it. Random init is run with two models, each GMML arm paired with both: `scratch` (finetune/cpu's max
pooling) and `scratch-token` (the GMML arms' token scoring, as the demo's scratch row), so a difference measures
the pretraining, not the aggregator. The CNN arms run the demo's CNN recipe (finetune/demo with demo.ARMS["cnn"]:
max over slices, lr 3.2e-2, no read-out) from random init (`cnn`) and from a pretrained CNN encoder (`gmml-cnn`,
--cnn-encoder: `sbssl pretrain --config pretrain/gmml_cnn_cpu`, or pretrain/jigsaw_cpu), and are paired with each
other; `--cnn-encoder NAME=RUN` adds more pretrained CNN arms (`gmml-cnn-NAME`, whatever pretext made RUN).
Adds a run to results/label_efficiency.json (named NAME), rewrites RESULTS.md and draws docs/NAME.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, record  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.data.layout import list_exams  # noqa: E402
from sbssl.evaluation.report_files import load_metrics, paired_runs_over_seeds  # noqa: E402
from sbssl.synth import SynthSpec, generate  # noqa: E402
from sbssl.workflow import finetune  # noqa: E402

ARMS = {"gmml": "ViT: GMML, fine-tuned", "probe": "ViT: GMML, linear probe",
        "mil": "ViT: GMML, frozen, token scoring", "mil-random": "ViT: random, frozen, token scoring",
        "lpft": "ViT: GMML, token read-out fitted, then fine-tuned (the demo's)",
        "scratch": "ViT: random init, max pooling", "scratch-token": "ViT: random init, token scoring",
        "cnn": "CNN: random init (the demo's)"}
COLOURS = {"gmml": "tab:blue", "probe": "tab:green", "mil": "tab:purple", "mil-random": "tab:grey",
           "lpft": "tab:red", "scratch": "tab:orange", "scratch-token": "tab:brown",
           "cnn": "black"}
SCRATCH = ("scratch", "scratch-token")  # the baselines every GMML ViT arm is paired with
CNN_COLOURS = ["tab:olive", "tab:cyan", "tab:pink", "gold"]


def _demo():
    return load_config("finetune/demo")


def demo_readout() -> list[str]:
    """finetune/demo's read-out: token scoring fitted on the frozen encoder's feature table (its steps, lr and
    prior), so the curve measures the recipe the demo ships."""
    f = _demo().finetune
    return ["finetune.aggregator=instance", f"finetune.probe_steps={f.probe_steps}",
            f"finetune.probe_solver={f.probe_solver}", f"finetune.probe_lr={f.probe_lr}",
            f"finetune.probe_l2={f.probe_l2}"]


def demo_fine_tuning() -> list[str]:
    """finetune/demo's second LP-FT stage: its lr and drop path."""
    d = _demo()
    return [f"train.lr={d.train.lr}", f"model.drop_path={d.model.drop_path}"]


def epochs_for(n: int, steps: int, batch: int = 8, positive_share: float = 0.184) -> int:
    """Epochs giving about `steps` optimiser steps on n labelled exams (80% fit, minority oversampled)."""
    per_epoch = max(2 * round(0.8 * n * (1 - positive_share)) // batch, 1)
    return int(np.clip(round(steps / per_epoch), 2, 60))


def cnn_arms(specs: list[str]) -> dict[str, str]:
    """--cnn-encoder values -> {arm: init}: RUN is the arm `gmml-cnn`, NAME=RUN the arm `gmml-cnn-NAME`."""
    out = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        out[f"gmml-cnn-{name}" if name else "gmml-cnn"] = path
    return out


def base_recipe(arm: str) -> str:
    return "finetune/demo" if arm == "cnn" or arm.startswith("gmml-cnn") else "finetune/cpu"


def arm_overrides(arm: str, encoder: str, cnn_inits: dict[str, str] | None = None) -> list[str]:
    """What makes `arm` differ from its base recipe. Every arm looks at the demo's region of interest, so
    that two arms differ only in what they name."""
    region = _demo().data
    return [f"data.roi={region.roi}", f"data.crop={region.crop}", f"data.slab={region.slab}",
            *_arm_overrides(arm, encoder, cnn_inits or {})]


def _arm_overrides(arm: str, encoder: str, cnn_inits: dict[str, str]) -> list[str]:
    from sbssl.demo import ARMS as DEMO_ARMS

    if arm == "cnn":  # the demo's CNN arm, random init
        return list(DEMO_ARMS["cnn"])
    if arm.startswith("gmml-cnn"):  # the same recipe from a GMML-pretrained CNN
        return [*DEMO_ARMS["cnn"], f"init={cnn_inits[arm]}"]
    if arm == "scratch":  # finetune/cpu's own model: max over tokens and slices
        return ["init=scratch"]
    if arm == "scratch-token":  # lpft's model (token scoring) from random init at scratch's lr: the demo's baseline
        return ["init=scratch", "finetune.aggregator=instance", f"model.drop_path={_demo().model.drop_path}"]
    if arm.startswith("mil"):  # the instance read-out of frozen tokens, fitted on the feature table (LP only)
        return [f"init={encoder if arm == 'mil' else 'scratch'}", "finetune.freeze=true", *demo_readout()]
    if arm == "lpft":  # that read-out first, then everything fine-tuned at finetune/demo's low lr (engine/probe.py)
        return [f"init={encoder}", *demo_readout(), *demo_fine_tuning()]
    return [f"init={encoder}"] + (["finetune.freeze=true", "train.lr=0.32", "train.weight_decay=1e-4",
                                   "train.weight_decay_end=1e-4"] if arm == "probe" else [])


def seed_averaged_difference(runs_a: list[Path], runs_b: list[Path]) -> dict:
    """Mean over subset seeds of AUC(a) - AUC(b); `ci95` holds the valid exams' noise (each resample applied to
    every seed's pair, as every recorded run reports it), `ci95_seeds` also resamples the seeds."""
    d = paired_runs_over_seeds(runs_a, runs_b)
    d.pop("bootstrap")
    return {**d, "ci95": d["ci95_exams"], "ci95_seeds": d["ci95"]}


def plot(points: list[dict], path: Path, title: str) -> None:
    from sbssl.utils.plotting import pyplot, save_png

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(9, 4))
    ns = sorted({p["labels"] for p in points})
    extra = sorted({p["arm"] for p in points} - set(ARMS))
    labels = {**ARMS, **{a: f"CNN: from the encoder '{a.removeprefix('gmml-cnn-')}'" for a in extra}}
    colours = {**COLOURS, **dict(zip(extra, CNN_COLOURS, strict=False))}
    for arm, label in labels.items():
        if not any(p["arm"] == arm for p in points):
            continue
        colour = colours.get(arm, "black")
        mean = [np.mean([p["auc"] for p in points if p["arm"] == arm and p["labels"] == n]) for n in ns]
        lo = [np.min([p["auc"] for p in points if p["arm"] == arm and p["labels"] == n]) for n in ns]
        hi = [np.max([p["auc"] for p in points if p["arm"] == arm and p["labels"] == n]) for n in ns]
        ax.plot(ns, mean, "o-", color=colour, label=label)
        ax.fill_between(ns, lo, hi, color=colour, alpha=0.15)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ns, [str(v) for v in ns])
    ax.set_xlabel("labelled training exams")
    ax.set_ylabel("valid AUC (mean; band: min-max over subset seeds)")
    ax.set_ylim(0.3, 1.0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the curves, never over them
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/label_efficiency", help="folder for the data and runs")
    ap.add_argument("--data", help="an MRNet-layout set (default: generate a synthetic one)")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--valid", type=int, default=120)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--encoder", default="builtin:cpu", help="a GMML encoder: builtin:cpu or a pretraining run")
    ap.add_argument("--labels", default="25,50,100,200,0", help="labelled exam counts; 0 = all")
    ap.add_argument("--seeds", default="0,1,2", help="subset (and member) seeds")
    ap.add_argument("--arms", default="mil,lpft,scratch,scratch-token")
    ap.add_argument("--cnn-encoder", action="append", default=[],
                    help="a GMML-pretrained CNN (RUN, or NAME=RUN), for the gmml-cnn arms")
    ap.add_argument("--steps", type=int, default=80, help="optimiser steps per run (epochs follow from n)")
    ap.add_argument("--finetune", default="", help="extra fine-tuning overrides")
    ap.add_argument("--docs", default="", help="the curve's PNG (default: docs/NAME.png)")
    ap.add_argument("--name", default="label_efficiency", help="results/NAME.json")
    ap.add_argument("--title", default="", help="the curve's title (default: the data it ran on)")
    a = ap.parse_args()
    work, t0 = Path(a.work), time.perf_counter()
    data = Path(a.data) if a.data else work / "data" / "MRNet-v1.0"
    if not a.data and not (data / "valid-acl.csv").exists():
        generate(data, SynthSpec(a.train, a.valid, a.size, seed=2, difficulty=a.difficulty))
    n_all = len(list_exams(data, "train"))
    seeds, arms = [int(s) for s in a.seeds.split(",")], a.arms.split(",")
    cnn_inits = cnn_arms(a.cnn_encoder)
    arms += [k for k in cnn_inits if k not in arms]
    unknown = [x for x in arms if x not in ARMS and x not in cnn_inits]
    if unknown:
        ap.error(f"unknown arm(s) {', '.join(unknown)} (a gmml-cnn arm needs --cnn-encoder)")
    points, diffs = [], []
    for n in [int(v) for v in a.labels.split(",")]:
        n_used = n if 0 < n < n_all else n_all
        runs: dict[str, list[Path]] = {arm: [] for arm in arms}
        for seed in seeds:
            for arm in arms:
                run = work / f"{arm}-{n_used}-s{seed}"
                epochs = 0 if arm.startswith("mil") else epochs_for(n_used, a.steps)
                over = [*arm_overrides(arm, a.encoder, cnn_inits), "finetune.ensemble=1", "finetune.holdout=shared",
                        f"finetune.labels={n}", f"train.seed={seed}", f"train.epochs={epochs}", *a.finetune.split()]
                if not (run / "metrics.json").exists():
                    finetune(load_config(base_recipe(arm), over), data, run)
                m = load_metrics(run)
                points.append({"arm": arm, "labels": n_used, "seed": seed, "epochs": epochs, "auc": m["auc"],
                               "auc_ci95": m["auc_ci95"]})
                runs[arm].append(run)
                print(f"n={n_used:4d} seed {seed} {arm:8s} epochs {epochs:3d} AUC {m['auc']:.3f} "
                      f"[{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}]  ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
        pairs = [(x, b) for x in ("gmml", "probe", "mil", "lpft") for b in SCRATCH if {x, b} <= set(arms)]
        pairs += [("mil", "mil-random")] if {"mil", "mil-random"} <= set(arms) else []
        pairs += [(x, "cnn") for x in arms if x.startswith("gmml-cnn") and "cnn" in arms]
        for arm, base in pairs:
            d = seed_averaged_difference(runs[arm], runs[base])
            diffs.append({"arm": f"{arm} - {base}", "labels": n_used, **d})
            print(f"n={n_used:4d} {arm} - {base}: {d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                  f" (per seed {', '.join(f'{v:+.3f}' for v in d['per_seed'])})", flush=True)
    title = a.title or (f"ACL, sagittal, synthetic {a.size} px (difficulty {a.difficulty}), valid n={a.valid}, "
             f"{len(seeds)} subset seeds" if not a.data else f"ACL, sagittal: {data}")
    plot(points, Path(a.docs) if a.docs else HERE.parent / "docs" / f"{a.name}.png", title)
    out = {"data": str(data), "train_exams": n_all, "encoder": a.encoder, "steps": a.steps, "seeds": seeds,
           "points": points, "differences": diffs, "seconds": time.perf_counter() - t0}
    summary = "; ".join(f"n={d['labels']} {d['arm']} {d['difference']:+.3f} [{d['ci95'][0]:+.3f}, "
                        f"{d['ci95'][1]:+.3f}]" for d in diffs)
    record(a.name, out, "python " + " ".join(sys.argv), summary)


if __name__ == "__main__":
    main()
