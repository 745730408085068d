"""The synthetic knee MRI set: MRNet layout, determinism, prevalences, recognisable findings."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np

from sbssl.synth import Labels, SynthSpec, assign_labels, generate, render_exam
from sbssl.synth.anatomy import CARTILAGE, FLUID, LIGAMENT, MARROW
from sbssl.synth.exam import SLICE_RANGES, acl_slice
from sbssl.synth.geometry import Canvas

from .conftest import TINY, assert_user_error, run_cli

CHECKER = Path(__file__).resolve().parents[1] / "tools" / "check_mrnet_layout.py"  # copy of shared/tools


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_dtypes_shapes_and_csvs(tiny_set: Path):
    for split, ids in (("train", range(TINY.train)), ("valid", range(TINY.train, TINY.train + TINY.valid))):
        for plane in ("sagittal", "coronal", "axial"):
            files = sorted(p.name for p in (tiny_set / split / plane).iterdir())
            assert files == [f"{i:04d}.npy" for i in ids]
            lo, hi = SLICE_RANGES[(split, plane)]
            for f in files:
                arr = np.load(tiny_set / split / plane / f, allow_pickle=False)
                assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[1:] == (64, 64)
                assert lo <= arr.shape[0] <= hi
                assert arr.std() > 5
        for task in ("abnormal", "acl", "meniscus"):
            rows = (tiny_set / f"{split}-{task}.csv").read_text().splitlines()
            assert [r.split(",")[0] for r in rows] == [f"{i:04d}" for i in ids]  # no header, zero padded
            assert {r.split(",")[1] for r in rows} <= {"0", "1"}


def test_every_tear_is_abnormal(tiny_set: Path):
    for split in ("train", "valid"):
        lab = {t: dict(r.split(",") for r in (tiny_set / f"{split}-{t}.csv").read_text().splitlines())
               for t in ("abnormal", "acl", "meniscus")}
        for case, v in lab["acl"].items():
            if v == "1" or lab["meniscus"][case] == "1":
                assert lab["abnormal"][case] == "1"


def test_reference_checker_accepts_default_size(tmp_path: Path):
    """The project's contract checker (256 px) on a small set."""
    root = tmp_path / "d"
    generate(root, SynthSpec(train=3, valid=2, size=256, seed=1, workers=2))
    res = subprocess.run([sys.executable, str(CHECKER), str(root), "3", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    assert res.stdout.startswith("ok:")


def test_deterministic_bytes_and_seed_changes_them(tmp_path: Path):
    spec = SynthSpec(train=4, valid=2, size=48, seed=11, workers=1)
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", SynthSpec(**{**spec.__dict__, "workers": 2}))  # workers do not matter
    generate(tmp_path / "c", SynthSpec(**{**spec.__dict__, "seed": 12}))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_prevalences_match_mrnet():
    for split, n, want in (("train", 1130, (913, 208, 397)), ("valid", 120, (95, 54, 52))):
        labs = assign_labels(n, split, seed=0)
        got = (sum(x.abnormal for x in labs), sum(x.acl for x in labs), sum(x.meniscus for x in labs))
        assert got == want
        assert all(x.abnormal for x in labs if x.acl or x.meniscus)
        both = sum(x.acl and x.meniscus for x in labs)
        assert 0 < both < want[1]  # tears co-occur, but not always


def _labels_of(exam, plane="sagittal") -> np.ndarray:
    from sbssl.synth.anatomy import paint_knee

    cv = Canvas(exam.grids[plane], mirror_x=exam.knee.mirror)
    paint_knee(cv, exam.knee)
    return cv.labels


def test_acl_tear_changes_the_ligament_and_intact_one_is_dark():
    intact = render_exam(5, 1, "train", Labels(0, 0, 0), size=128)
    torn = render_exam(5, 1, "train", Labels(1, 1, 0), size=128)
    li, lt = _labels_of(intact), _labels_of(torn)
    # same subject (anatomy drawn after findings from one stream), different notch content
    k = acl_slice(intact)
    assert (li[k] == LIGAMENT).sum() > 20
    assert not np.array_equal(li, lt)
    # every exam holds the main tissues
    for t in (MARROW, CARTILAGE, LIGAMENT):
        assert (li == t).any()
    sev = torn.knee.findings.acl_severity
    assert 0 < sev <= 1


def test_meniscal_tear_is_a_bright_line_in_the_dark_wedge():
    ex = render_exam(2, 7, "train", Labels(1, 0, 1), size=128)
    assert ex.knee.findings.meniscus_tear
    lab = _labels_of(ex)
    ex0 = render_exam(2, 7, "train", Labels(1, 0, 0), size=128)
    # the tear adds fluid signal inside the meniscus region
    assert (lab == FLUID).sum() != (_labels_of(ex0) == FLUID).sum()


def test_synth_cli_refuses_to_overwrite_and_validates_args(tmp_path: Path, capsys):
    from sbssl.cli import main

    out = tmp_path / "s"
    assert main(["synth", "--out", str(out), "--train", "2", "--valid", "1", "--size", "32", "--workers", "1"]) == 0
    before = (out / "train-acl.csv").read_bytes()
    assert_user_error(run_cli("synth", "--out", out, "--train", 2, "--valid", 1, "--size", 32), str(out),
                      "--overwrite")  # in a fresh process: the CLI's exit code and one line
    assert (out / "train-acl.csv").read_bytes() == before
    capsys.readouterr()
    assert main(["synth", "--out", str(tmp_path / "x"), "--difficulty", "3"]) == 2
    assert "difficulty" in capsys.readouterr().err.strip().splitlines()[-1]


def test_gallery_writes_pngs(tmp_path: Path):
    from sbssl.synth.gallery import acl_gallery

    p = acl_gallery(tmp_path / "g.png", pairs=1, size=64)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_small_series_are_area_averaged_not_point_sampled():
    """Below 256 px the phantom is painted on sub-pixels and averaged: thin structures give intermediate grey
    levels instead of aliasing into isolated full-contrast pixels."""
    from sbssl.synth.exam import fine_grid, supersampling

    assert supersampling(256) == 1 and supersampling(128) == 2 and supersampling(64) == 2 and supersampling(32) == 4
    ex = render_exam(5, 1, "train", Labels(0, 0, 0), size=64)
    g = ex.grids["sagittal"]
    f = fine_grid(g, 2)
    # the mean of each 2x2 block of sub-pixel centres is the pixel centre
    idx = np.array([0, 3, 5], float)
    centre = g.origin + g.axes @ idx
    subs = [f.origin + f.axes @ np.array([idx[0], 2 * idx[1] + a, 2 * idx[2] + b]) for a in (0, 1) for b in (0, 1)]
    assert np.allclose(np.mean(subs, 0), centre)
    assert f.shape == (g.shape[0], 128, 128)


def _tear_contrast(difficulty: float, cases: range) -> float:
    """Mean number of sagittal voxels whose tissue a tear changes, against the same knee with an intact ACL."""
    from dataclasses import replace

    from sbssl.synth.anatomy import Findings, paint_knee

    diffs = []
    for c in cases:
        torn = render_exam(9, c, "train", Labels(1, 1, 0), size=48, difficulty=difficulty)
        intact = Canvas(torn.grids["sagittal"], mirror_x=torn.knee.mirror)
        paint_knee(intact, replace(torn.knee, findings=Findings(effusion=torn.knee.findings.effusion)))
        diffs.append(float((_labels_of(torn) != intact.labels).sum()))
    return float(np.mean(diffs))


def test_difficulty_is_monotone_in_tear_conspicuity():
    """0 = every tear a complete tear with a wide gap; rising difficulty mixes in partial and chronic tears."""
    from sbssl.synth.exam import acl_tear_type, sample_acl_tear

    def mix(d: float) -> dict[str, float]:
        rng = np.random.default_rng(0)
        kinds = [acl_tear_type(sample_acl_tear(rng, d)) for _ in range(2000)]
        return {k: kinds.count(k) / len(kinds) for k in ("partial", "complete", "chronic")}

    assert mix(0.0)["complete"] == 1.0
    shares = [mix(d)["complete"] for d in (0.0, 0.25, 0.5, 1.0)]
    assert all(a > b for a, b in zip(shares, shares[1:], strict=False))
    assert mix(1.0)["partial"] > 0.3 and mix(1.0)["chronic"] > 0.15
    assert _tear_contrast(0.0, range(8)) > _tear_contrast(1.0, range(8))


def test_train_prevalence_option_and_findings_files(tmp_path: Path):
    labs = assign_labels(200, "train", seed=0, acl_prevalence=0.4)
    assert sum(x.acl for x in labs) == 80 and all(x.abnormal for x in labs if x.acl)
    assert sum(x.acl for x in assign_labels(120, "valid", seed=0)) == 54  # valid keeps MRNet's
    root = tmp_path / "d"
    generate(root, SynthSpec(train=6, valid=3, size=32, seed=2, workers=1, prevalence=0.5))
    assert sum(int(r.split(",")[1]) for r in (root / "train-acl.csv").read_text().split()) == 3
    rows = list(csv.DictReader((root / "findings" / "train.csv").read_text().splitlines()))
    assert [r["case"] for r in rows] == [f"{i:04d}" for i in range(6)]
    acl = {r.split(",")[0]: r.split(",")[1] for r in (root / "train-acl.csv").read_text().split()}
    for r in rows:  # findings agree with the labels
        assert (r["acl_tear"] != "none") == (acl[r["case"]] == "1")
    assert len(list(csv.DictReader((root / "findings" / "valid.csv").read_text().splitlines()))) == 3
    from sbssl.data.check import check_dataset

    assert check_dataset(root).ok  # the MRNet layout readers ignore the findings folder
