"""Randomised synthetic families and the region of interest that follows the knee."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sbssl.data.cache import build_cache
from sbssl.data.layout import list_exams, synth_family
from sbssl.data.localise import KNEE_FILL, knee_box, knee_region
from sbssl.data.prepare import prepare_volume, roi
from sbssl.data.preprocessing import Preprocessing
from sbssl.synth import Labels, SynthSpec, generate, render_exam
from sbssl.synth.anatomy import DEGENERATE, FLUID, KNEE_RANGES, Findings, sample_knee, widen
from sbssl.synth.anatomy import FLOORS as ANATOMY_FLOORS
from sbssl.synth.family import (
    FAMILIES,
    HELD_OUT_FAMILIES,
    SELECTION_FAMILIES,
    STORAGE,
    family,
    subject_row,
    vary_anatomy,
)
from sbssl.synth.geometry import Canvas, Deformation, SliceGrid, ellipsoid

from .conftest import assert_user_error, run_cli

# The demo generator's bytes, as every shipped result was made on them (computed before families existed).
DEMO_DIGEST = "002c5a681ef847c0110f2ebdba031f86b4f25332c91f6a4c8815ca3f5e96e11b"
# The earlier families' middle three slices of each plane, rendered by the code before the later knobs existed
# (commit 01872b8). Stored as images, not digests: their TorchIO and float steps round 1 level differently on
# CPUs of other instruction sets (AVX2 / AVX-512), while a knob that drew a number would change every voxel.
FAMILY_REFERENCE = Path(__file__).parent / "data" / "family_reference.npz"


def test_sets_of_the_demo_generator_are_known_as_such(tiny_set: Path):
    """The shipped encoder's notice (engine/finetune.py) tells demo-generator sets from every other kind."""
    assert synth_family(tiny_set) == "demo"


def test_demo_family_keeps_the_demo_generators_bytes():
    h = hashlib.sha256()
    for case, lab in ((3, Labels(1, 1, 0)), (4, Labels(0, 0, 0))):
        e = render_exam(4, case, "train", lab, 48, 0.5, family("demo"))
        assert e.acquisitions is None
        for p in ("sagittal", "coronal", "axial"):
            h.update(e.volumes[p].tobytes())
    assert h.hexdigest() == DEMO_DIGEST


@pytest.mark.parametrize("name", [*SELECTION_FAMILIES, *HELD_OUT_FAMILIES])
def test_family_draws_each_knob_from_its_ranges_deterministically(name: str):
    fam = family(name)
    exams = [render_exam(9, c, "train", Labels(1, c % 2, 0), 48, 0.5, fam) for c in range(6)]
    again = render_exam(9, 0, "train", Labels(1, 0, 0), 48, 0.5, fam)
    assert all(np.array_equal(exams[0].volumes[p], again.volumes[p]) for p in exams[0].volumes)
    for e in exams:
        for plane, vol in e.volumes.items():
            a = e.acquisitions[plane]
            dtype, top = STORAGE[a.storage]
            assert vol.dtype == dtype and vol.shape == (a.slices, 48, 48) and 0 < vol.max() <= top
            assert fam.slices[0] <= a.slices <= fam.slices[1] and a.sequence in fam.sequences
            assert fam.fill[0] <= a.fill <= fam.fill[1] and abs(a.offset_rows) <= fam.offset
            assert abs(a.rotation) <= fam.rotation and fam.snr[0] <= a.snr <= fam.snr[1]
            assert vol.std() > 0.05 * top
    seqs = {e.acquisitions["sagittal"].sequence for e in exams}
    assert len(seqs) > 1 or len(fam.sequences) == 1  # contrast is drawn per exam, not per family


def test_families_differ_from_the_demo_and_held_out_lies_outside_selection():
    vols = {n: render_exam(2, 1, "train", Labels(0, 0, 0), 48, 0.5, family(n)).volumes["sagittal"]
            for n in ("demo", "mixed")}
    assert vols["demo"].shape != vols["mixed"].shape or not np.array_equal(vols["demo"], vols["mixed"])
    sel = [FAMILIES[n] for n in SELECTION_FAMILIES]
    for held in (FAMILIES[n] for n in HELD_OUT_FAMILIES):
        outside = [held.offset > max(f.offset for f in sel), held.rotation > max(f.rotation for f in sel),
                   held.fill[0] < min(f.fill[0] for f in sel), held.snr[0] < min(f.snr[0] for f in sel),
                   held.anatomy > max(f.anatomy for f in sel), held.warp[1] > max(f.warp[1] for f in sel),
                   held.blur[1] > max(f.blur[1] for f in sel), held.texture[0] < min(f.texture[0] for f in sel)]
        assert sum(outside) >= 2, held.name


def test_earlier_families_keep_their_images_when_new_knobs_exist():
    """Recorded results were made on clinic, mixed and shifted: the anatomy and renderer knobs added later
    draw nothing for them. At most one voxel in a thousand may differ, by one level (float rounding)."""
    ref = np.load(FAMILY_REFERENCE, allow_pickle=False)
    for name in ("clinic", "mixed", "shifted"):
        for case, lab in ((3, Labels(1, 1, 0)), (4, Labels(0, 0, 0))):
            e = render_exam(4, case, "train", lab, 48, 0.5, family(name))
            for p in ("sagittal", "coronal", "axial"):
                vol, want = e.volumes[p], ref[f"{name}_{case}_{p}"]
                mid = len(vol) // 2
                got = vol[mid - 1: mid + 2].astype(np.int64)
                assert vol.dtype == want.dtype and got.shape == want.shape, (name, case, p)
                diff = np.abs(got - want)
                assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (name, case, p, diff.max(), (diff > 0).mean())


def test_deformation_is_bounded_smooth_and_moves_what_the_canvas_paints():
    rng = np.random.default_rng(0)
    warp = Deformation.draw(rng, 8.0)
    p = rng.uniform(-100, 100, (3, 2000)).astype(np.float32)
    q = p + rng.normal(0, 2, p.shape).astype(np.float32)
    u, v = warp(p) - p, warp(q) - q
    assert np.abs(u).max() <= warp.reach + 1e-4 and np.abs(u).max() > 1.0  # it moves, within its bound
    stretch = np.linalg.norm(u - v, axis=0) / np.linalg.norm(p - q, axis=0)
    assert stretch.max() <= warp.lipschitz - 1 + 1e-4 and warp.lipschitz <= 1.5 + 1e-6  # never folds
    grid = SliceGrid(origin=np.array([-2.0, -40.0, -40.0]), axes=np.diag([1.0, 1.0, 1.0]), shape=(5, 80, 80))
    plain, warped = Canvas(grid, mirror_x=False), Canvas(grid, mirror_x=False, warp=warp)
    for cv in (plain, warped):
        cv.paint((-15, -15, -15), (15, 15, 15), ellipsoid((0, 0, 0), (12, 12, 12)), [(0.0, 1)])
    rows, cols = np.nonzero(warped.labels[2])
    centre = np.array([0.0, rows.mean() - 40, cols.mean() - 40])
    assert abs(int(plain.labels.sum()) - int(warped.labels.sum())) < 0.5 * plain.labels.sum()
    # the ball now sits where the warp pulls the phantom's centre from: p + u(p) ~ 0
    np.testing.assert_allclose(warp(centre[:, None].astype(np.float32))[:, 0][1:], 0.0, atol=2.0)
    # the canvas refines near every level: the warped ball equals a dense evaluation of the warped distance
    pts = grid.points(*[np.arange(n, dtype=np.float32) for n in (5, 80, 80)])
    dense = ellipsoid((0, 0, 0), (12, 12, 12))(warp(pts)) < 0
    assert (dense != warped.labels.astype(bool)).mean() < 1e-3


def test_a_familys_subjects_widen_deform_and_fill_tears_as_drawn():
    knee = sample_knee(np.random.default_rng(1), Findings(acl_tear=True, acl_severity=0.6))
    assert widen(knee, 1.0) is knee
    wide = widen(knee, 2.0)
    for name, ranges in KNEE_RANGES.items():
        got, was = np.atleast_1d(getattr(wide, name)), np.atleast_1d(getattr(knee, name))
        mid = np.array([(lo + hi) / 2 for lo, hi in ranges])
        floor = ANATOMY_FLOORS.get(name, 0.0)
        np.testing.assert_allclose(got, np.maximum(mid + 2 * (was - mid), floor), rtol=1e-6)
    fam = replace(family("varied"), granulation=1.0)
    varied = vary_anatomy(knee, fam, np.random.default_rng(2))
    assert varied.warp is not None and varied.findings.acl_gap == DEGENERATE and knee.findings.acl_gap == FLUID
    partial = replace(knee, findings=Findings(acl_tear=True, acl_severity=0.2))
    assert vary_anatomy(partial, fam, np.random.default_rng(2)).findings.acl_gap == FLUID  # no gap to fill
    e = render_exam(5, 1, "train", Labels(1, 1, 0), 48, 0.5, family("varied"))
    a = e.acquisitions["sagittal"]
    assert e.knee.warp is not None and 0.0 <= a.blur <= 1.2 and 0.5 <= a.texture <= 2.0
    assert subject_row(varied) == {"warp_mm": round(varied.warp.reach, 2), "acl_gap": "granulation"}
    assert subject_row(knee) == {"warp_mm": 0.0, "acl_gap": "fluid"}


def test_family_ground_truth_slice_follows_reversed_order():
    """A reversed stack is stored last slice first; the grid (and so the galleries' ACL slice) follows it."""
    fam = replace(family("clinic"), reverse=1.0, motion=0.0, ghosting=0.0)
    fwd = replace(fam, reverse=0.0)
    a = render_exam(6, 2, "train", Labels(0, 0, 0), 48, 0.5, fam)
    b = render_exam(6, 2, "train", Labels(0, 0, 0), 48, 0.5, fwd)
    assert a.acquisitions["sagittal"].reversed and not b.acquisitions["sagittal"].reversed
    ga, gb = a.grids["sagittal"], b.grids["sagittal"]
    n = a.volumes["sagittal"].shape[0]
    np.testing.assert_allclose(ga.origin, gb.origin + gb.axes[:, 0] * (n - 1))
    np.testing.assert_allclose(ga.axes[:, 0], -gb.axes[:, 0])


def _disc_volume(centre: tuple[int, int], radius: int, size: int = 128, slices: int = 10) -> np.ndarray:
    """A bright noisy disc (a limb in cross-section) with a dark hole (bone cortex) on a dim noisy field."""
    rng = np.random.default_rng(0)
    r, c = np.mgrid[:size, :size]
    d = np.hypot(r - centre[0], c - centre[1])
    img = np.where(d < radius, 0.6, 0.0) - np.where(d < radius / 4, 0.5, 0.0)
    return (img[None] + 0.08 * np.abs(rng.standard_normal((slices, size, size)))).astype(np.float32)


def test_knee_box_finds_an_off_centre_limb_and_the_region_follows_it():
    vol = _disc_volume((40, 80), 24)
    box = knee_box(vol)
    assert abs(box.centre[0] - 40) <= 4 and abs(box.centre[1] - 80) <= 4
    assert abs(box.diameter - 48) <= 8 and box.slices == (0, 10)
    s, r, c = knee_region(vol, 0.5, 0.4)
    side = r.stop - r.start
    assert side == c.stop - c.start and abs(side - 0.5 / KNEE_FILL * box.diameter) <= 1
    assert abs((r.start + r.stop) / 2 - 40) <= 4 and abs((c.start + c.stop) / 2 - 80) <= 4
    assert s.stop - s.start == 4
    centred = roi(vol, 0.5, 0.4)  # the central crop stays in the middle of the field
    np.testing.assert_array_equal(centred, vol[3:7, 32:96, 32:96])
    # the same knee twice as large in the field: the region grows with it (the scale follows the knee)
    big = knee_region(_disc_volume((64, 64), 48), 0.5, 1.0)
    assert 1.7 < (big[1].stop - big[1].start) / side < 2.3  # the box is taken at quarter resolution
    # a region near the field's edge is shifted inside it, never cut
    s, r, c = knee_region(_disc_volume((10, 118), 30), 1.0, 1.0)
    assert r.start == 0 and c.stop == 128


def test_knee_box_of_a_constant_series_is_the_whole_field():
    box = knee_box(np.zeros((3, 32, 32), np.uint8))
    assert box.rows == (0.0, 32.0) and box.cols == (0.0, 32.0) and box.slices == (0, 3)


def test_knee_region_holds_the_acl_of_family_exams():
    """The phantom knows where the ACL is: on exams of a family with off-centre knees the region that follows
    the knee holds it (benchmarks/roi_coverage.py measures this at scale)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from roi_coverage import acl_index, margin

    for case in range(3):
        e = render_exam(8, case, "train", Labels(0, 0, 0), 96, 0.5, family("mixed"))
        inplane, along = margin(acl_index(e), knee_region(e.volumes["sagittal"], 0.5, 0.4))
        assert inplane > 0 and along >= 0


def test_knee_roi_travels_in_the_preprocessing_record_and_the_cache(tmp_path: Path):
    vol = (_disc_volume((40, 80), 24) * 200).astype(np.uint8)
    pre = Preprocessing(16, crop=0.5, slab=0.4, mean=0.3, std=0.2, roi="knee")
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert Preprocessing.from_meta(pre.to_meta()) == pre
    knee = pre.prepare(vol)
    np.testing.assert_array_equal(knee, prepare_volume(vol, 16, 0.5, 0.4, mode="knee"))
    assert not np.array_equal(knee, replace(pre, roi="center").prepare(vol))
    root = tmp_path / "MRNet-v1.0"
    generate(root, SynthSpec(train=3, valid=1, size=64, seed=2, workers=1, family="mixed"))
    recs = list_exams(root, "train", "sagittal", "acl")
    cache = build_cache(recs, 16, tmp_path / "c", "t", 0.5, 0.4, mode="knee")
    centre = build_cache(recs, 16, tmp_path / "c", "t", 0.5, 0.4)
    assert len(list((tmp_path / "c").glob("t-16-*.npy"))) == 2  # the mode is part of the cache's key
    from sbssl.data.volume_io import load_volume

    want = np.concatenate([prepare_volume(load_volume(r.path), 16, 0.5, 0.4, mode="knee") for r in recs])
    np.testing.assert_array_equal(np.asarray(cache.data), want)
    assert not np.array_equal(np.asarray(cache.data)[: len(centre.data)], np.asarray(centre.data)[: len(cache.data)])


def test_synth_family_cli_gallery_record_and_check(tmp_path: Path, capsys):
    from sbssl.cli import main

    out = tmp_path / "mixed"
    assert main(["synth", "--out", str(out), "--train", "3", "--valid", "2", "--size", "48", "--family", "mixed",
                 "--gallery", "--workers", "1", "--seed", "4"]) == 0  # in-process; the CLI's refusal below runs apart
    for png in ("acl.png", "meniscus.png", "family-mixed.png"):
        assert (out / "gallery" / png).stat().st_size > 5000
    rec = json.loads((out / "findings" / "synth.json").read_text())
    assert rec["spec"]["family"] == "mixed" and rec["family"]["sequences"] == list(FAMILIES["mixed"].sequences)
    rows = (out / "findings" / "train.csv").read_text().splitlines()
    assert "sag_sequence" in rows[0] and "warp_mm" in rows[0] and "acl_gap" in rows[0] and len(rows) == 4
    assert synth_family(out) == "mixed" and synth_family(tmp_path) is None
    assert main(["check", "--data", str(out)]) == 0, capsys.readouterr()
    assert_user_error(run_cli("synth", "--out", tmp_path / "x", "--train", 1, "--valid", 1, "--family", "nope"),
                      "nope", "known")
    assert not (tmp_path / "x").exists()


def test_a_mix_of_families_takes_them_in_turn_and_each_exam_is_its_familys_own(tmp_path: Path, capsys):
    from sbssl.cli import main
    from sbssl.synth.landmarks import replayed_acl_midpoint

    out = tmp_path / "mix"
    assert main(["synth", "--out", str(out), "--train", "4", "--valid", "2", "--size", "48", "--family",
                 "demo,varied", "--workers", "1", "--seed", "5"]) == 0
    rows = [r.split(",") for r in (out / "findings" / "train.csv").read_text().splitlines()]
    col = rows[0].index("family")
    assert [r[col] for r in rows[1:]] == ["demo", "varied", "demo", "varied"]
    assert rows[1][rows[0].index("warp_mm")] == "" and rows[2][rows[0].index("warp_mm")] != ""  # demo: no knobs
    rec = json.loads((out / "findings" / "synth.json").read_text())
    assert set(rec["family"]) == {"demo", "varied"} and rec["family"]["varied"]["anatomy"] == FAMILIES["varied"].anatomy
    labels = [Labels(*map(int, (a, b, c))) for a, b, c in zip(*(
        [ln.split(",")[1] for ln in (out / f"train-{t}.csv").read_text().splitlines()]
        for t in ("abnormal", "acl", "meniscus")), strict=True)]
    for case, fam in ((0, None), (1, family("varied"))):
        alone = render_exam(5, case, "train", labels[case], 48, 0.5, fam).volumes["sagittal"]
        np.testing.assert_array_equal(np.load(out / "train" / "sagittal" / f"{case:04d}.npy"), alone)
    assert replayed_acl_midpoint(rec["spec"], 1, labels[1]).shape == (3,)
    with pytest.raises(ValueError, match="demo"):
        replayed_acl_midpoint(rec["spec"], 2, labels[2])
    assert synth_family(out) == "demo,varied"
    assert main(["check", "--data", str(out)]) == 0, capsys.readouterr()
    assert_user_error(run_cli("synth", "--out", tmp_path / "x", "--train", 1, "--valid", 1, "--family", "demo,nope"),
                      "nope", "known")
