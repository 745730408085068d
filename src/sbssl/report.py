"""`report.html`: one self-contained page (images inlined, no network) from run folders.

It finds, below the folders given: fine-tuned runs (metrics.json), pretraining runs
(encoder.safetensors + recon/), comparisons (compare.json) and explanation overlays
(explain/*.png), and lays them out as the paper does: a Table 1, the paired AUC
difference, ROC curves, reconstructions, attention maps, training curves, configs.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sbssl.data.layout import PLANES
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
            if p.name == "explain":
                f.overlays.extend(sorted(p.glob("*.png")))
        if (root / "commands.txt").exists():
            f.commands.extend(root.joinpath("commands.txt").read_text().splitlines())
    return f


def _img(path_or_png: Path | bytes, alt: str, width: str = "100%") -> str:
    data = path_or_png if isinstance(path_or_png, bytes) else Path(path_or_png).read_bytes()
    b64 = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" style="max-width:{width}" src="data:image/png;base64,{b64}">'


def _n_params(run: Path) -> int:
    from safetensors import safe_open

    first = sorted(run.glob("model-*.safetensors"))[0]
    with safe_open(str(first), "pt") as f:
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))  # noqa: SIM118 (not a dict)


def _method(m: dict) -> str:
    if m.get("model") == "mrnet_cnn":
        return "Random init CNN (MRNet-style)"
    if str(m.get("init", "")).startswith("gmml:"):
        return "SB-SSL (GMML pretrained)"
    return "Random init ViT"


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


CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:12px}
.grid figure{margin:0;flex:1 1 300px}figcaption{font-size:12px;color:#555}pre{background:#f7f7f7;padding:8px;
overflow-x:auto;font-size:12px}.note{color:#555;font-size:13px}"""

CHECK_JS = """<script>window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
document.getElementById('imgcheck').textContent='images-loaded:'+ok+'/'+im.length;});</script>"""


def build_report(roots: list[Path], out: Path, title: str = "sbssl report") -> Path:
    found = discover(roots)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style>{CHECK_JS}</head><body><h1>{html.escape(title)}</h1>"]
    parts.append(_table(found))
    parts.append(_by_tear_type(found))
    parts.append(_grid(found))
    parts.append(_comparison(found))
    rocs = [(r, r / ROC) for r in found.finetune if (r / ROC).exists()]
    if rocs:
        parts.append("<h2>ROC curves (members and ensemble)</h2><div class='grid'>" + "".join(
            f"<figure>{_img(p, f'ROC {r.name}')}<figcaption>{html.escape(r.name)}</figcaption></figure>"
            for r, p in rocs) + "</div>")
    for run in found.pretrain:
        grids = sorted((run / "recon").glob("epoch_*.png"))
        if grids:
            parts.append(f"<h2>GMML reconstruction ({html.escape(run.name)}, {grids[-1].stem})</h2>"
                         "<p class='note'>Rows: original, corrupted, reconstruction, reconstruction pasted into "
                         "the masked groups, mask (as the paper's Fig. 4).</p>" + _img(grids[-1], "reconstruction"))
    if found.overlays:
        parts.append("<h2>Attention maps (class token, block 10, head-averaged; paper Fig. 5)</h2><div class='grid'>"
                     + "".join(f"<figure>{_img(p, p.stem)}<figcaption>{html.escape(p.stem)}</figcaption></figure>"
                               for p in found.overlays[:6]) + "</div>")
    curves = _curves_png(found)
    if curves:
        parts.append("<h2>Training curves</h2>" + _img(curves, "training curves"))
    parts.append(_configs(found))
    parts.append("<p class='note' id='imgcheck'>images: not checked</p></body></html>")
    out = Path(out)
    atomic_write_text(out, "\n".join(parts))
    return out


def _table(found: Found) -> str:
    """Every run on the first run's task, plane and split (the grid holds the others)."""
    rows = []
    first = json.loads((found.finetune[0] / METRICS).read_text()) if found.finetune else {}
    for run in found.finetune:
        m = json.loads((run / METRICS).read_text())
        if (m["task"], m["plane"], m["split"]) != (first["task"], first["plane"], first["split"]):
            continue
        lo, hi = m["auc_ci95"]
        rows.append(f"<tr><td>{html.escape(_method(m))}</td><td>{html.escape(m.get('model', ''))}</td>"
                    f"<td>{_n_params(run) / 1e6:.1f}M</td><td>{100 * m['accuracy']:.2f}</td>"
                    f"<td>{m['auc']:.3f} [{lo:.3f}, {hi:.3f}]</td><td>{m['sensitivity']:.2f} / "
                    f"{m['specificity']:.2f}</td><td>{m['members']}</td><td>{html.escape(run.name)}</td></tr>")
    if not rows:
        return "<p>No fine-tuned runs found.</p>"
    return (f"<h2>Table 1: {html.escape(first['task'])} tear, {html.escape(first['plane'])} plane, "
            f"{html.escape(first['split'])} split (n = {first['n']}, {first['positives']} positive)</h2>"
            "<table><tr><th>method</th><th>backbone</th><th># params</th><th>accuracy (%)</th>"
            "<th>AUC [95% bootstrap CI]</th><th>sens / spec</th><th>members</th><th>run</th></tr>"
            + "".join(rows) + "</table><p class='note'>Accuracy, sensitivity and specificity at threshold 0.5; "
            "epochs chosen on a held-out part of the train split, never on the reported split.</p>")


def _grid(found: Found) -> str:
    """MRNet's grid: AUC [95% CI] per task (rows) and plane (columns), the fused model, and each column's mean
    over tasks (what the MRNet competition ranks). Shown when the folders hold a fusion."""
    if not found.fused:
        return ""
    cells: dict[tuple[str, str], dict] = {}
    for run in found.finetune + found.fused:
        m = json.loads((run / METRICS).read_text())
        col = "fused" if run in found.fused else m["plane"]
        cells.setdefault((m["task"], col), m)  # the first run found for a cell
    tasks = sorted({t for t, _ in cells})
    cols = [c for c in (*PLANES, "fused") if any((t, c) in cells for t in tasks)]

    def cell(t: str, c: str) -> str:
        m = cells.get((t, c))
        return "<td>-</td>" if m is None else \
            f"<td>{m['auc']:.3f} [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}]</td>"

    rows = "".join(f"<tr><td>{html.escape(t)}</td>{''.join(cell(t, c) for c in cols)}</tr>" for t in tasks)
    means = "".join(f"<td><b>{np.mean([cells[(t, c)]['auc'] for t in tasks]):.3f}</b></td>"
                    if all((t, c) in cells for t in tasks) else "<td>-</td>" for c in cols)
    return ("<h2>Every task on every plane, and the planes fused</h2><table><tr><th>task</th>"
            + "".join(f"<th>{c}</th>" for c in cols) + "</tr>" + rows + f"<tr><td>mean over tasks</td>{means}</tr>"
            + "</table><p class='note'>AUC [95% bootstrap CI] on the valid split. Fusion: a logistic regression "
            "on the planes' probabilities, fitted on held-out train exams (MRNet's method), scored once here.</p>")


def _by_tear_type(found: Found) -> str:
    """Sensitivity per ACL tear type, where the dataset ships findings (the synthetic set does)."""

    from sbssl.evaluate.findings import TEAR_TYPES, read_findings, sensitivity_by_tear_type

    rows = []
    for run in found.finetune:
        m = json.loads((run / METRICS).read_text())
        root = run_root(run)
        findings = read_findings(Path(root), m["split"]) if root and m.get("task") == "acl" else None
        if not findings or not (run / PREDICTIONS).exists():
            continue
        sens = sensitivity_by_tear_type(run / PREDICTIONS, findings)
        cells = "".join(f"<td>{sens[k][0]:.2f} ({sens[k][1]})</td>" if k in sens else "<td>-</td>"
                        for k in TEAR_TYPES)
        rows.append(f"<tr><td>{html.escape(_method(m))}</td><td>{html.escape(run.name)}</td>{cells}</tr>")
    if not rows:
        return ""
    return ("<h2>Sensitivity by ACL tear type</h2><table><tr><th>method</th><th>run</th>"
            + "".join(f"<th>{k} (n)</th>" for k in TEAR_TYPES) + "</tr>" + "".join(rows)
            + "</table><p class='note'>Share of torn exams of each type called positive at threshold 0.5, from "
            "the dataset's <code>findings/</code> files. Partial tears (thickening, intermediate signal) and chronic "
            "absence (fat in an empty notch) are the subtle ones on a fat-suppressed sagittal series.</p>")


def _comparison(found: Found) -> str:
    out = []
    for c in found.compare:
        r = json.loads((c / COMPARE).read_text())
        lo, hi = r["ci95"]
        verdict = "above zero" if lo > 0 else ("below zero" if hi < 0 else "includes zero")
        out.append(f"<h2>Paired AUC difference: {html.escape(Path(r['run_a']).name)} - "
                   f"{html.escape(Path(r['run_b']).name)}</h2><p><b>{r['difference']:+.3f}</b> "
                   f"(95% paired bootstrap CI [{lo:+.3f}, {hi:+.3f}], {verdict}; one-sided p = "
                   f"{r['p_value_one_sided']:.3f}; n = {r['n']}, {r['reps']} resamples)</p>")
        if (c / COMPARE_PLOT).exists():
            out.append(_img(c / COMPARE_PLOT, "paired bootstrap", "520px"))
    return "".join(out)


def _configs(found: Found) -> str:
    out = ["<h2>Commands and configs</h2>"]
    if found.commands:
        out.append("<pre>" + html.escape("\n".join(found.commands)) + "</pre>")
    for run in found.pretrain + found.finetune:
        out.append(f"<details><summary>{html.escape(str(run.name))}/config.yaml</summary><pre>"
                   f"{html.escape((run / 'config.yaml').read_text())}</pre></details>")
    return "".join(out)
