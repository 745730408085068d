"""The second phantom (synth/phantom2.py): its own anatomy, tissue model and renderer, in MRNet's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sbssl.data.layout import synth_family
from sbssl.synth import Labels
from sbssl.synth import phantom2 as p2
from sbssl.synth.landmarks import RECORDED, set_acl_midpoints


def _labels_at(root: Path, split: str) -> list[Labels]:
    cols = [[ln.split(",")[1] for ln in (root / f"{split}-{t}.csv").read_text().splitlines()]
            for t in ("abnormal", "acl", "meniscus")]
    return [Labels(*map(int, r)) for r in zip(*cols, strict=True)]


def test_an_exam_is_a_function_of_its_seed_case_and_labels():
    a, row = p2.render_case(3, 7, "train", Labels(1, 1, 0), 48)
    b, _ = p2.render_case(3, 7, "train", Labels(1, 1, 0), 48)
    c, _ = p2.render_case(3, 8, "train", Labels(1, 1, 0), 48)
    for plane, vol in a.items():
        assert vol.ndim == 3 and vol.shape[1:] == (48, 48) and vol.dtype in (np.uint8, np.uint16)
        np.testing.assert_array_equal(vol, b[plane])
        assert vol.max() > 0 and vol.std() > 0
    assert not np.array_equal(a["sagittal"], c["sagittal"]) or a["sagittal"].shape != c["sagittal"].shape
    assert row["acl_tear"] in ("complete", "partial", "chronic") and row["meniscus_tear"] == "none"
    assert 0 <= row["acl_slice"] <= a["sagittal"].shape[0] - 1 and 0 < row["acl_row"] < 48 and 0 < row["acl_col"] < 48


def test_the_tear_is_drawn_where_the_ligament_was():
    """The same subject intact and torn: along the ACL's axis the ligament's signal gives way to the gap's fluid
    (complete), to a thinned core in swollen tissue (partial), or to the notch's fat (chronic)."""
    rng = np.random.default_rng(0)
    subj = p2.draw_subject(rng, 1, 0, 1)
    fem, tib = p2.acl_ends(subj.shape)
    f = {**subj.findings, "acl_t0": 0.4, "acl_len": 0.45, "gap": p2.FLUID, "bruise": False}
    t = np.linspace(0, 1, 41, dtype=np.float32)[:, None]
    axis = fem + t * (tib - fem)
    across = axis + np.array([1.1 * subj.shape["ra"], 0, 0], np.float32)  # beside the axis, within 1.3 radii

    def tissue(kind: str, points: np.ndarray) -> np.ndarray:
        cv = p2.Canvas(tuple(points.T.copy()))
        p2.paint_cruciates(cv, subj.shape, {**f, "acl": kind, "mimic": "none"})
        return cv.labels

    margin = 1.2 * subj.shape["ra"] / float(np.linalg.norm(tib - fem))  # the stumps' rounded ends reach this far
    gap = (t[:, 0] > 0.4 + margin) & (t[:, 0] < 0.85 - margin)
    assert gap.sum() >= 3
    assert (tissue("none", axis) == p2.LIGAMENT).all()
    assert (tissue("complete", axis)[gap] == p2.FLUID).all() and (tissue("complete", axis)[t[:, 0] < 0.35]
                                                                 == p2.LIGAMENT).all()
    assert (tissue("partial", axis) == p2.LIGAMENT).all() and (tissue("partial", across)[gap] == p2.TEAR).all()
    assert (tissue("chronic", axis) == p2.AIR).all()  # nothing painted: the canvas's own label remains


def test_fat_suppression_darkens_fat_and_marrow_only():
    rng = np.random.default_rng(1)
    pd, fs = p2.tissue_signal("pd", rng), p2.tissue_signal("pdfs", np.random.default_rng(1))
    ratio = fs / np.maximum(pd, 1e-6)
    assert ratio[p2.FAT] < 0.3 and ratio[p2.MARROW] < 0.4 and ratio[p2.FLUID] > 0.7
    t2 = p2.tissue_signal("t2fs", rng)
    assert t2[p2.FLUID] > 2 * t2[p2.MUSCLE] and t2[p2.LIGAMENT] < 0.2 * t2[p2.FLUID]


def test_kspace_reconstructs_a_smooth_image_and_adds_rician_noise():
    rng = np.random.default_rng(2)
    y, x = np.mgrid[:64, :64]
    img = np.exp(-((x - 32) ** 2 + (y - 32) ** 2) / 200.0)[None].astype(np.float32)
    clean = p2.kspace(img, 32, 48, 0.0, 0.0, rng)[0]
    assert clean.shape == (48, 48) and abs(clean.max() - 1.0) < 0.05 and clean[24, 24] > 0.9
    noisy = p2.kspace(np.zeros_like(img), 32, 48, 0.1, 0.0, rng)[0]
    assert 0.09 < noisy.mean() / (np.sqrt(np.pi) / 2) < 0.11  # |complex noise of std s|: Rayleigh, mean s*sqrt(pi)/2


def test_synth_cli_writes_phantom2_in_mrnet_layout_and_mixes_it(tmp_path: Path, capsys):
    from sbssl.cli import main

    out = tmp_path / "p2"
    assert main(["synth", "--out", str(out), "--train", "4", "--valid", "2", "--size", "48", "--family",
                 "phantom2", "--workers", "1", "--seed", "2"]) == 0
    rec = json.loads((out / "findings" / "synth.json").read_text())
    assert rec["spec"]["family"] == "phantom2" and rec["family"] == p2.DESCRIPTION and synth_family(out) == "phantom2"
    header, *rows = [r.split(",") for r in (out / "findings" / "train.csv").read_text().splitlines()]
    for row, lab in zip(rows, _labels_at(out, "train"), strict=True):
        got = dict(zip(header, row, strict=True))
        assert (got["acl_tear"] != "none") == bool(lab.acl) and (got["meniscus_tear"] != "none") == bool(lab.meniscus)
    assert main(["check", "--data", str(out)]) == 0, capsys.readouterr()
    at = set_acl_midpoints(out, "train")  # the localiser's ground truth: the recorded midpoints, not a replay
    assert [tuple(v) for v in at.values()] == [tuple(float(r[header.index(k)]) for k in RECORDED) for r in rows]
    mix = tmp_path / "mix"
    assert main(["synth", "--out", str(mix), "--train", "2", "--valid", "1", "--size", "48", "--family",
                 "phantom2,clinic", "--workers", "1", "--seed", "2", "--gallery"]) == 0
    assert {p.name for p in (mix / "gallery").iterdir()} == {"acl.png", "meniscus.png", "family-clinic.png",
                                                             "phantom2.png"}
    assert (mix / "gallery" / "phantom2.png").stat().st_size > 5000
    header, *rows = [r.split(",") for r in (mix / "findings" / "train.csv").read_text().splitlines()]
    assert [r[header.index("family")] for r in rows] == ["phantom2", "clinic"]
    alone = p2.render_case(2, 0, "train", _labels_at(mix, "train")[0], 48)[0]["sagittal"]
    np.testing.assert_array_equal(np.load(mix / "train" / "sagittal" / "0000.npy"), alone)
    at = set_acl_midpoints(mix, "train")  # phantom2's case recorded, clinic's replayed from its draws
    assert tuple(at["0000"]) == tuple(float(rows[0][header.index(k)]) for k in RECORDED) and at["0001"].shape == (3,)
