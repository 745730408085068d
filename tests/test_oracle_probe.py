"""benchmarks/oracle_probe.py (the ACL's own slice and window) and token_probe.py's resized read-out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sbssl.synth import SynthSpec, generate
from sbssl.synth.dataset import assign_labels
from sbssl.synth.exam import render_exam
from sbssl.synth.family import family
from sbssl.synth.landmarks import replayed_acl_midpoint

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import oracle_probe
        import roi_coverage
        import token_probe
        yield SimpleNamespace(oracle=oracle_probe, coverage=roi_coverage, tokens=token_probe)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def clinic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oracle") / "MRNet-v1.0"
    generate(root, SynthSpec(train=6, valid=4, size=64, seed=5, workers=1, family="clinic", prevalence=0.5))
    return root


def test_oracle_replays_the_renderers_knee_and_grid(bench, clinic: Path):
    """The ACL's position comes from replaying the set's draws without rendering: it must be the rendered exam's."""
    spec = json.loads((clinic / "findings" / "synth.json").read_text())["spec"]
    labels = assign_labels(spec["train"], "train", spec["seed"], spec["prevalence"])
    for case in range(3):
        exam = render_exam(spec["seed"], case, "train", labels[case], spec["size"], spec["difficulty"],
                           family("clinic"))
        np.testing.assert_allclose(replayed_acl_midpoint(spec, case, labels[case]),
                                   bench.coverage.acl_index(exam), atol=1e-6)
        at = replayed_acl_midpoint(spec, case, labels[case])
        x = bench.oracle.oracle_crop(exam.volumes["sagittal"], at, 0.35)
        assert x.shape == (3, 32, 32) and x.min() >= 0 and x.max() <= 1
        assert bench.oracle.slice_miss(exam.volumes["sagittal"], at) <= 1.5  # the recipes' slices reach it


def test_oracle_probe_cli_scores_each_arm_within_each_sequence(clinic: Path):
    res = subprocess.run([sys.executable, str(BENCH / "oracle_probe.py"), "--data", str(clinic), "--window", "0",
                          "--arms", "cnn,frozen:random", "--epochs", "1", "--no-record"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    arms = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in res.stdout.splitlines()
            if line.startswith(("cnn ", "frozen:random "))}
    assert set(arms) == {"cnn", "frozen:random"}
    for scores in arms.values():
        assert "auc" in scores and set(scores) - {"auc"} <= {"pd", "pdfs"}


def test_oracle_probe_refuses_the_demo_generators_set(tiny_set: Path):
    res = subprocess.run([sys.executable, str(BENCH / "oracle_probe.py"), "--data", str(tiny_set), "--no-record"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "replays a family's draws" in res.stderr


def test_token_probe_reads_an_encoder_at_another_size(bench):
    from sbssl.models.vit import create_encoder

    small = create_encoder("vit_tiny", 32, 8, 1, 0.0, "conv", depth=1)
    init = SimpleNamespace(weights=small.state_dict())
    same, big = create_encoder("vit_tiny", 32, 8, 1, 0.0, "conv", depth=1), create_encoder("vit_tiny", 48, 8, 1, 0.0,
                                                                                            "conv", depth=1)
    bench.tokens.load_resized(init, same)
    bench.tokens.load_resized(init, big)
    for k, v in small.state_dict().items():
        torch.testing.assert_close(same.state_dict()[k], v)  # at its own size nothing changes
        if k != "pos_embed":
            torch.testing.assert_close(big.state_dict()[k], v)
    assert big.pos_embed.shape[1] == 1 + 6 * 6
    torch.testing.assert_close(big.pos_embed[:, 0], small.pos_embed[:, 0])  # the class token's is kept


def test_localiser_soft_argmax_is_the_score_maps_peak():
    from sbssl.data.acl_region import soft_argmax

    scores = np.zeros((1, 16, 16), np.float32)
    scores[0, 5, 10] = 50.0
    np.testing.assert_allclose(soft_argmax(scores), [[5.5 / 16, 10.5 / 16]], atol=1e-6)


def test_localiser_learns_where_a_spot_is_whatever_its_contrast():
    """Bright or dark spots on a noisy background (contrast re-drawn in training): the trained localiser, run in
    numpy as preparation runs it, must beat always answering the mean position."""
    from sbssl.data.acl_region import localise
    from sbssl.models.acl_localiser import train_localiser

    rng = np.random.default_rng(0)
    n = 384
    pos = rng.uniform(0.2, 0.8, (n, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:64, 0:64] / 64
    spot = np.exp(-((yy[None] - pos[:, :1, None]) ** 2 + (xx[None] - pos[:, 1:, None]) ** 2) / 0.002)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None, None]
    x = (0.5 + 0.4 * sign * spot + 0.05 * rng.standard_normal((n, 64, 64))).clip(0, 1).astype(np.float32)
    net = train_localiser(x[:320], pos[:320], epochs=8)
    err = np.abs(localise(x[320:], net.folded()) - pos[320:]).max(1)
    prior = np.abs(pos[:320].mean(0) - pos[320:]).max(1)
    assert np.median(err) < 0.5 * np.median(prior)


def test_oracle_and_predicted_box_folders_are_generic_sets_with_roi_boxes(bench, clinic: Path, tmp_path: Path):
    from sbssl.data.acl_region import SHIPPED
    from sbssl.data.check import check_dataset
    from sbssl.data.layout import case_key, list_exams, read_roi_boxes

    sys.path.insert(0, str(BENCH))
    try:
        from acl_localiser import write_boxes
    finally:
        sys.path.remove(str(BENCH))
    bench.oracle.oracle_folder(clinic, tmp_path / "oracle", 0.35)
    write_boxes(SHIPPED, clinic, tmp_path / "predicted", 0.35)
    for out in (tmp_path / "oracle", tmp_path / "predicted"):
        assert check_dataset(out).ok
        for split in ("train", "valid"):
            recs = list_exams(out, split)
            boxes = read_roi_boxes(out / split / "roi.csv")
            assert {case_key(r.case) for r in recs} == set(boxes) and all(r.box is not None for r in recs)
            for r in recs:
                x, y, z, h, w, d = r.box
                n, rows, cols = np.load(r.path, mmap_mode="r").shape
                assert h == w == round(0.35 * rows) and 0 <= y <= rows - h and 0 <= x <= cols - w and z + d <= n


def test_paired_runs_cli_pairs_seed_k_of_a_with_seed_k_of_b(tmp_path: Path):
    """benchmarks/paired_runs.py: a recipe measured later, paired with runs already made, seed by seed."""
    from sklearn.metrics import roc_auc_score

    from sbssl.evaluation.report_files import write_predictions

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)
    cases = [f"{i:04d}" for i in range(len(y))]
    probs = {"a": [y * 2 + rng.normal(0, 1, 40) for _ in range(2)], "b": [rng.random(40) for _ in range(2)]}
    for arm, qs in probs.items():
        for k, q in enumerate(qs):
            write_predictions(tmp_path / f"{arm}{k}" / "predictions.csv", cases, 1 / (1 + np.exp(-q)), y)
    want = np.mean([roc_auc_score(y, a) - roc_auc_score(y, b) for a, b in zip(probs["a"], probs["b"], strict=True)])
    res = subprocess.run([sys.executable, str(BENCH / "paired_runs.py"), "--a", f"{tmp_path}/a0,{tmp_path}/a1",
                          "--b", f"{tmp_path}/b0,{tmp_path}/b1", "--no-record"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"A - B {want:+.3f}" in res.stdout


def test_token_probe_reads_the_encoder_on_the_asked_region(bench):
    """--roi and --crop (here about the knee box) must reach both the slice cache's config and the record (the
    encoder's intensity statistics kept); without them the probe reads the encoder's own region."""
    from sbssl.models.encoder_file import encoder_init

    init = encoder_init("builtin:cpu")
    own_cfg, own = bench.tokens.probe_region(init, "sagittal")
    shipped = init.preprocessing
    assert (own_cfg.data.roi, own_cfg.data.crop) == (own.roi, own.crop) == (shipped.roi, shipped.crop)
    cfg, pre = bench.tokens.probe_region(init, "sagittal", "knee", 0.5, 48)
    assert (cfg.data.roi, cfg.data.crop, cfg.data.img_size) == (pre.roi, pre.crop, pre.img_size) == ("knee", 0.5, 48)
    assert pre.crop != own.crop and (pre.slab, pre.mean, pre.std) == (own.slab, own.mean, own.std)
