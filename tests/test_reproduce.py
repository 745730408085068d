"""`sbssl reproduce --scale cpu`: the plan first, every step once, a rerun skips them, one report with the grid."""

from __future__ import annotations

import json
from pathlib import Path

from sbssl.reproduce import GRID_TASKS, Sizes, plan

from .conftest import run_cli

TINY = ["train.epochs=1", "model.depth=4", "data.img_size=16", "model.patch_size=4", "finetune.slices=4",
        "train.batch_size=32", "train.recon_every=0", "trainer.accelerator=cpu"]


def test_plan_covers_table1_ablations_and_grid(tmp_path: Path):
    steps = plan(tmp_path, "cpu", Sizes(300, 12))
    names = [s.name for s in steps]
    assert "finetune table1/vit-scratch" in names and "finetune table1/sbssl-vit_tiny" in names
    assert {"finetune ablations/epochs1", "finetune ablations/zeros"} <= set(names)
    assert sum(n.startswith("finetune grid/") for n in names) == 9
    assert [n for n in names if n.startswith("fuse")] == [f"fuse {t}" for t in GRID_TASKS]
    # each fine-tuning from a pretraining comes after it; each fusion after its three plane runs
    for i, s in enumerate(steps):
        for o in s.overrides:
            if o.startswith("init=") and o.endswith("encoder.safetensors"):
                enc = Path(o[5:]).parent
                assert any(t.out == enc for t in steps[:i]), s.name
        assert all(any(t.out == r for t in steps[:i]) for r in s.runs)
    paper = plan(tmp_path, "paper", Sizes(1130, 32))
    assert {"finetune table1/sbssl-vit_small", "finetune table1/sbssl-vit_base"} <= {s.name for s in paper}
    assert sum(s.seconds for s in paper) > 10 * sum(s.seconds for s in steps)


def test_reproduce_runs_resumes_and_reports(tiny_set: Path, tmp_path: Path):
    out = tmp_path / "repro"
    res = run_cli("reproduce", "--data", tiny_set, "--out", out, *TINY, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("plan: 19 steps, 0 done")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["grid"]) == set(GRID_TASKS)
    for task in GRID_TASKS:
        assert set(summary["grid"][task]) == {"sagittal", "coronal", "axial", "fused"}
    assert set(summary["mean_auc_over_tasks"]) == {"sagittal", "coronal", "axial", "fused"}
    html = (out / "report.html").read_text()
    assert "Every task on every plane" in html and "mean over tasks" in html and "Table 1" in html
    grid_html = html[html.index("Every task on every plane"):]
    for task in GRID_TASKS:  # each grid row shows that task's fused plane runs (the CNNs), then the fusion
        cells = [summary["grid"][task][c] for c in ("sagittal", "coronal", "axial", "fused")]
        want = "".join(f"<td>{c['auc']:.3f} [{c['auc_ci95'][0]:.3f}, {c['auc_ci95'][1]:.3f}]</td>" for c in cells)
        assert f"<tr><td>{task}</td>{want}</tr>" in grid_html, task
    assert (out / "commands.txt").read_text().count("sbssl fuse") == 3
    again = run_cli("reproduce", "--data", tiny_set, "--out", out, *TINY)
    assert again.returncode == 0 and again.stdout.startswith("plan: 19 steps, 19 done")
    assert "step " not in again.stderr  # nothing reran
