"""`sbssl reproduce --scale cpu`: the plan first, every step once, a rerun skips them, one report with the grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sbssl.errors import SbsslError
from sbssl.reproduce import GRID_TASKS, TABLE1, Sizes, plan, skipped_rows

from .conftest import assert_user_error, run_cli

TINY = ["train.epochs=1", "model.depth=4", "data.img_size=16", "model.patch_size=4", "finetune.slices=4",
        "train.batch_size=32", "train.recon_every=0", "trainer.accelerator=cpu"]


def test_plan_covers_table1_ablations_and_grid(tmp_path: Path):
    steps = plan(tmp_path, "cpu", Sizes(300, 12))
    names = [s.name for s in steps]
    assert "finetune table1/vit-scratch" in names and "finetune table1/sbssl-vit_tiny" in names
    assert {"finetune ablations/base", "finetune ablations/epochs1", "finetune ablations/zeros"} <= set(names)
    # the ViT rows run the demo's recipe; SB-SSL from the folder's own slices (the recipe's own epochs) or, on the
    # synthetic set it was made for, from the shipped encoder
    by_name = {s.name: s for s in steps}
    sbssl_vit = by_name["finetune table1/sbssl-vit_tiny"]
    assert sbssl_vit.config == by_name["finetune table1/vit-scratch-token"].config == "finetune/demo"
    assert by_name["finetune table1/vit-scratch"].config == "finetune/cpu"
    own = by_name["pretrain sagittal-vit_tiny"]
    assert f"init={own.out / 'encoder.safetensors'}" in sbssl_vit.overrides
    assert not any(o.startswith("train.epochs") for o in own.overrides)
    shipped = {s.name: s for s in plan(tmp_path, "cpu", Sizes(300, 12), shipped_encoder=True)}
    assert "init=builtin:cpu" in shipped["finetune table1/sbssl-vit_tiny"].overrides
    assert "pretrain sagittal-vit_tiny" not in shipped and len(shipped) == len(steps) - 1
    assert sum(n.startswith("finetune grid/") for n in names) == 9
    assert [n for n in names if n.startswith("fuse")] == [f"fuse {t}" for t in GRID_TASKS]
    # each fine-tuning from a pretraining comes after it; each fusion after its three plane runs
    for i, s in enumerate(steps):
        for o in s.overrides:
            if o.startswith("init=") and o.endswith("encoder.safetensors"):
                enc = Path(o[5:]).parent
                assert any(t.out == enc for t in steps[:i]), s.name
        assert all(any(t.out == r for t in steps[:i]) for r in s.runs)
    assert {"pretrain sagittal-gmml_cnn", "finetune table1/gmml-cnn", "pretrain sagittal-jigsaw",
            "finetune table1/jigsaw-cnn", "pretrain sagittal-jigsaw-noise",
            "finetune table1/jigsaw-noise-cnn"} <= set(names)
    assert not any("imagenet" in n for n in names)
    paper = plan(tmp_path, "paper", Sizes(1130, 32))
    assert {"finetune table1/sbssl-vit_small", "finetune table1/sbssl-vit_base",
            "finetune table1/cnn-scratch"} <= {s.name for s in paper}
    assert sum(s.seconds for s in paper) > 10 * sum(s.seconds for s in steps)


def test_every_table1_row_is_planned_or_skipped_with_its_reason(tiny_set: Path, tmp_path: Path):
    weights = tmp_path / "imagenet"
    weights.mkdir()
    with pytest.raises(SbsslError, match="alexnet.pth"):
        plan(tmp_path, "cpu", Sizes(300, 12), imagenet=weights)
    (weights / "alexnet.pth").write_bytes(b"")  # the plan checks that the files are there; reading comes later
    (weights / "vit_small.safetensors").write_bytes(b"")
    for scale in ("cpu", "paper"):
        steps = {s.out.relative_to(tmp_path).as_posix(): s for s in plan(tmp_path, scale, Sizes(300, 12),
                                                                            imagenet=weights)}
        planned = {row for row, _, runs, _ in TABLE1 if runs and scale in runs and runs[scale] in steps}
        skipped = {row for row, _ in skipped_rows(scale, None)}
        assert planned | {row for row, _ in skipped_rows(scale, weights)} >= {r[0] for r in TABLE1
                                                                              if r[2] is None or scale in r[2]}
        assert "MRNet: ImageNet AlexNet" in skipped and "MRNet: ImageNet AlexNet" in planned
        assert {"[20] jigsaw CNN", "[20] + noise", "Random init ViT", "SB-SSL ViT-T"} <= planned
        alex = steps["table1/imagenet-alexnet"].overrides
        assert f"init={weights / 'alexnet.pth'}" in alex and "model.name=mrnet_cnn" in alex
    assert "ImageNet ViT-S" in {r for r, _ in skipped_rows("paper", None)}
    res = run_cli("reproduce", "--out", tmp_path / "r", "--dry-run", "--data", tiny_set, "--imagenet-weights", tmp_path)
    assert_user_error(res, str(tmp_path), "alexnet.pth")


def test_reproduce_runs_resumes_and_reports(tiny_set: Path, tmp_path: Path):
    out = tmp_path / "repro"
    res = run_cli("reproduce", "--data", tiny_set, "--out", out, *TINY, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("plan: 28 steps, 0 done")
    assert "[ skipped] Table 1 row 'MRNet: ImageNet AlexNet': needs --imagenet-weights" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    table = {r["row"]: r for r in summary["table1"]}
    assert table["SB-SSL ViT-T"]["paper_auc"] == 0.952 and 0 <= table["SB-SSL ViT-T"]["auc"] <= 1
    gmml_cnn = table["GMML CNN (beyond the paper)"]
    pa = json.loads((out / "table1" / "gmml-cnn" / "metrics.json").read_text())["auc"]
    pb = json.loads((out / "grid" / "acl-sagittal" / "metrics.json").read_text())["auc"]
    assert gmml_cnn["auc"] == pa and gmml_cnn["minus_random_init"]["difference"] == pytest.approx(pa - pb)
    assert table["[20] + noise"]["paper_auc"] == 0.817 and "minus_random_init" in table["[20] jigsaw CNN"]
    assert "skipped" in table["MRNet: ImageNet AlexNet"]
    assert set(summary["grid"]) == set(GRID_TASKS)
    for task in GRID_TASKS:
        assert set(summary["grid"][task]) == {"sagittal", "coronal", "axial", "fused"}
    assert set(summary["mean_auc_over_tasks"]) == {"sagittal", "coronal", "axial", "fused"}
    html = (out / "report.html").read_text()
    assert "Every task on every plane" in html and "mean over tasks" in html and "Table 1" in html
    assert "paper's AUC" in html and "<td>0.952</td>" in html  # SB-SSL ViT-T beside the paper's figure
    grid_html = html[html.index("Every task on every plane"):]
    for task in GRID_TASKS:  # each grid row shows that task's fused plane runs (the CNNs), then the fusion
        cells = [summary["grid"][task][c] for c in ("sagittal", "coronal", "axial", "fused")]
        want = "".join(f"<td>{c['auc']:.3f} [{c['auc_ci95'][0]:.3f}, {c['auc_ci95'][1]:.3f}]</td>" for c in cells)
        assert f"<tr><td>{task}</td>{want}</tr>" in grid_html, task
    assert (out / "commands.txt").read_text().count("sbssl fuse") == 3
    again = run_cli("reproduce", "--data", tiny_set, "--out", out, *TINY)
    assert again.returncode == 0 and again.stdout.startswith("plan: 28 steps, 28 done")
    assert "step " not in again.stderr  # nothing reran
