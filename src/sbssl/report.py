"""`report.html`: one self-contained page (images inlined, no network) from run folders.

It finds, below the folders given: fine-tuned runs (metrics.json), pretraining runs
(encoder.safetensors + recon/), comparisons (compare.json) and explanation overlays
(explain/*.png), and lays them out as the paper does: a Table 1, the paired AUC
difference, ROC curves, reconstructions, attention and Grad-CAM maps, training curves, configs. The page is a Jinja2
template (templates/report.html.j2, autoescaped); this module only gathers what goes in it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sbssl.data.layout import PLANES
from sbssl.registry import CNNS
from sbssl.utils.io import atomic_write_text
from sbssl.utils.rundir import (
    CHECKPOINTS,
    COMPARE,
    COMPARE_PLOT,
    CONFIG,
    ENCODER,
    FUSION,
    LOG,
    METRICS,
    PREDICTIONS,
    ROC,
    run_root,
)


@dataclass
class Found:
    finetune: list[Path] = field(default_factory=list)
    pretrain: list[Path] = field(default_factory=list)
    compare: list[Path] = field(default_factory=list)
    fused: list[Path] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


def discover(roots: list[Path]) -> Found:
    f = Found()
    for root in map(Path, roots):
        for p in sorted([root, *root.rglob("*")]):
            if not p.is_dir() or ".sbssl-cache" in p.parts or CHECKPOINTS in p.parts:
                continue
            if (p / METRICS).exists() and (p / CONFIG).exists() and any(p.glob("model-*.safetensors")):
                f.finetune.append(p)
            if (p / ENCODER).exists():
                f.pretrain.append(p)
            if (p / COMPARE).exists():
                f.compare.append(p)
            if (p / METRICS).exists() and (p / FUSION).exists():
                f.fused.append(p)
            if p.name == "explain" or p.name.startswith("explain-"):  # explain-cnn: the CNN's Grad-CAM
                f.overlays.extend(sorted(p.glob("*.png"))[:4])  # four per model, side by side
        if (root / "commands.txt").exists():
            f.commands.extend(root.joinpath("commands.txt").read_text().splitlines())
    return f


def _png_uri(path_or_png: Path | bytes) -> str:
    """An image inlined as a data URI: the page needs no network and no files beside it."""
    data = path_or_png if isinstance(path_or_png, bytes) else Path(path_or_png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _n_params(run: Path) -> int:
    from safetensors import safe_open

    first = sorted(run.glob("model-*.safetensors"))[0]
    with safe_open(str(first), "pt") as f:
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))  # noqa: SIM118 (not a dict)


def _method(m: dict) -> str:
    init = str(m.get("init", ""))
    if init.startswith("imported:"):
        return f"ImageNet-pretrained {'CNN (MRNet: AlexNet)' if m.get('model') in CNNS else 'ViT'}"
    if init.startswith("jigsaw"):
        return "[20] + noise" if init.startswith("jigsaw+noise:") else "[20] jigsaw CNN"
    if m.get("model") in CNNS:
        gmml = init.startswith("gmml:")
        return "GMML-pretrained CNN (beyond the paper)" if gmml else "Random init CNN (MRNet-style)"
    if init.startswith("gmml:"):
        return "SB-SSL (GMML pretrained)"
    return "Random init ViT"


def _paper_auc(m: dict) -> float | None:
    """The paper's Table 1 AUC for this kind of run (MRNet, ACL, sagittal), beside ours; None beyond the paper."""
    from sbssl.reproduce import paper_auc

    return paper_auc(_method(m), m.get("model", ""))


def _curves_png(found: Found) -> bytes | None:
    from sbssl.utils.plotting import pyplot, save_png

    plt = pyplot()

    logs = [(p, p / LOG) for p in found.pretrain + found.finetune if (p / LOG).exists()]
    if not logs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for run, lp in logs:
        recs = [json.loads(line) for line in lp.read_text().splitlines() if line.strip()]
        if run in found.pretrain:
            axes[0].plot([r["epoch"] + 1 for r in recs], [r["loss"] for r in recs], marker="o", label=run.name)
        else:
            for seed in sorted({r["member"] for r in recs}):
                rr = [r for r in recs if r["member"] == seed]
                axes[1].plot([r["epoch"] + 1 for r in rr], [r["heldout_auc"] for r in rr], marker=".",
                             label=f"{run.name} #{seed}")
    axes[0].set(title="GMML pretraining: masked L1", xlabel="epoch", ylabel="loss")
    axes[1].set(title="fine-tuning: held-out AUC (train split)", xlabel="epoch", ylabel="AUC")
    for ax in axes:
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, None, dpi=80)


def build_report(roots: list[Path], out: Path, title: str = "sbssl report") -> Path:
    from jinja2 import Environment, PackageLoader, select_autoescape

    found = discover(roots)
    page = {
        "title": title, "table1": _table(found), "tear_types": _by_tear_type(found), "grid": _grid(found),
        "comparisons": _comparison(found),
        "rocs": [{"name": r.name, "img": _png_uri(r / ROC)} for r in found.finetune if (r / ROC).exists()],
        "recons": [{"run": run.name, "epoch": g[-1].stem, "img": _png_uri(g[-1])} for run in found.pretrain
                   if (g := sorted((run / "recon").glob("epoch_*.png")))],
        "overlays": [{"name": f"{p.parent.name}/{p.stem}", "img": _png_uri(p)} for p in found.overlays[:8]],
        "curves": _png_uri(c) if (c := _curves_png(found)) else None,
        "commands": found.commands,
        "configs": [{"name": run.name, "text": (run / CONFIG).read_text()} for run in found.pretrain + found.finetune],
    }
    env = Environment(loader=PackageLoader("sbssl", "templates"), autoescape=select_autoescape(["html", "j2"]))
    out = Path(out)
    atomic_write_text(out, env.get_template("report.html.j2").render(**page))
    return out


def _table(found: Found) -> dict | None:
    """Table 1: every run on the first run's task, plane and split (the grid holds the others)."""
    if not found.finetune:
        return None
    first = json.loads((found.finetune[0] / METRICS).read_text())
    rows = []
    for run in found.finetune:
        m = json.loads((run / METRICS).read_text())
        if (m["task"], m["plane"], m["split"]) != (first["task"], first["plane"], first["split"]):
            continue
        rows.append({"method": _method(m), "model": m.get("model", ""), "params": _n_params(run),
                     "paper": _paper_auc(m) if (first["task"], first["plane"]) == ("acl", "sagittal") else None,
                     "accuracy": m["accuracy"], "auc": m["auc"], "lo": m["auc_ci95"][0], "hi": m["auc_ci95"][1],
                     "sensitivity": m["sensitivity"], "specificity": m["specificity"], "members": m["members"],
                     "run": run.name})
    return {"task": first["task"], "plane": first["plane"], "split": first["split"], "n": first["n"],
            "positives": first["positives"], "rows": rows}


def _grid(found: Found) -> dict | None:
    """MRNet's grid: AUC [95% CI] per task (rows) for each fused model's plane runs and the fused model, and each
    column's mean over tasks (what the MRNet competition ranks). Shown when the folders hold a fusion."""
    cells: dict[tuple[str, str], dict] = {}

    def cell(metrics_path: Path) -> dict:
        m = json.loads(metrics_path.read_text())
        return {"auc": m["auc"], "lo": m["auc_ci95"][0], "hi": m["auc_ci95"][1]}

    for fused in found.fused:
        f = json.loads((fused / FUSION).read_text())
        cells[(f["task"], "fused")] = cell(fused / METRICS)
        for plane, run in zip(f["planes"], f["runs"], strict=True):
            if (Path(run) / METRICS).exists():
                cells[(f["task"], plane)] = cell(Path(run) / METRICS)
    if not cells:
        return None
    tasks = sorted({t for t, _ in cells})
    cols = [c for c in (*PLANES, "fused") if any((t, c) in cells for t in tasks)]
    means = [float(np.mean([cells[(t, c)]["auc"] for t in tasks])) if all((t, c) in cells for t in tasks) else None
             for c in cols]
    return {"cols": cols, "rows": [{"task": t, "cells": [cells.get((t, c)) for c in cols]} for t in tasks],
            "means": means}


def _by_tear_type(found: Found) -> dict | None:
    """Sensitivity per ACL tear type, where the dataset ships findings (the synthetic set does)."""
    from sbssl.evaluation.findings import TEAR_TYPES, read_findings, sensitivity_by_tear_type

    rows = []
    for run in found.finetune:
        m = json.loads((run / METRICS).read_text())
        root = run_root(run)
        findings = read_findings(Path(root), m["split"]) if root and m.get("task") == "acl" else None
        if not findings or not (run / PREDICTIONS).exists():
            continue
        sens = sensitivity_by_tear_type(run / PREDICTIONS, findings)
        rows.append({"method": _method(m), "run": run.name,
                     "cells": [f"{sens[k][0]:.2f} ({sens[k][1]})" if k in sens else "-" for k in TEAR_TYPES]})
    return {"types": list(TEAR_TYPES), "rows": rows} if rows else None


def _comparison(found: Found) -> list[dict]:
    out = []
    for c in found.compare:
        r = json.loads((c / COMPARE).read_text())
        lo, hi = r["ci95"]
        out.append({"a": Path(r["run_a"]).name, "b": Path(r["run_b"]).name, "difference": r["difference"],
                    "lo": lo, "hi": hi, "p": r["p_value_one_sided"], "n": r["n"], "reps": r["reps"],
                    "verdict": "above zero" if lo > 0 else ("below zero" if hi < 0 else "includes zero"),
                    "img": _png_uri(c / COMPARE_PLOT) if (c / COMPARE_PLOT).exists() else None})
    return out
