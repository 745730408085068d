"""data.roi=acl: the label-free ACL localiser (synth/landmarks.py, models/acl_localiser.py, data/acl_region.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sbssl.data.acl_region as region
from sbssl.config import load_config
from sbssl.data.acl_region import (
    SHIPPED,
    acl_centre,
    acl_region,
    knee_view,
    load_localiser,
    localise,
    located,
    variants,
)
from sbssl.data.cache import build_cache
from sbssl.data.layout import list_exams
from sbssl.data.localise import knee_box, knee_region
from sbssl.data.prepare import prepare_volume, resize_slices, robust_minmax
from sbssl.data.preprocessing import Preprocessing
from sbssl.data.volume_io import load_volume
from sbssl.models.acl_localiser import AclLocaliser, standardised
from sbssl.models.encoder_file import encoder_init, init_preprocessing
from sbssl.synth import Labels, SynthSpec, generate, render_exam
from sbssl.synth.family import family
from sbssl.synth.landmarks import acl_midpoint, replayed_acl_midpoint, set_acl_midpoints


def test_numpy_forward_is_the_torch_localiser_with_batch_norm_folded():
    """Preparation runs the localiser in numpy (torch-free export); it must be the trained network exactly."""
    torch.manual_seed(0)
    net = AclLocaliser()
    for m in net.modules():  # batch-norm statistics and affine terms far from identity, so folding is tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    net.eval()
    views = np.random.default_rng(1).random((3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = net(standardised(torch.from_numpy(views)[:, None])).numpy()
    got = localise(views, net.folded())
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert got.min() > 0 and got.max() < 1


def test_replayed_acl_position_is_where_the_renderer_drew_it():
    """The localiser's targets come from replaying an exam's draws; they must match the rendered exam's."""
    spec = {"family": "morphed", "seed": 4, "difficulty": 0.5, "size": 64}
    for case, labels in ((0, Labels(0, 0, 0)), (1, Labels(1, 1, 0))):
        exam = render_exam(4, case, "train", labels, 64, 0.5, family("morphed"))
        np.testing.assert_allclose(replayed_acl_midpoint(spec, case, labels), acl_midpoint(exam), atol=1e-9)
    with pytest.raises(ValueError, match="demo generator"):
        replayed_acl_midpoint({**spec, "family": "demo"}, 0, Labels(0, 0, 0))


def test_shipped_localiser_centres_the_region_on_the_acl_of_a_family_it_never_saw():
    """Trained on `varied` (tools/make_acl_localiser.sh); on exams of `morphed` (wider shapes, deformations) the
    0.35 window about its answer holds the ligament, in-plane and along the stack."""
    errors = []
    for case in range(4):
        exam = render_exam(12, case, "train", Labels(int(case % 2), 0, 0), 128, 0.5, family("morphed"))
        vol, at = exam.volumes["sagittal"], acl_midpoint(exam)
        s, r, c = acl_region(vol, 0.35, 0.4)
        assert r.start <= at[1] < r.stop and c.start <= at[2] < c.stop
        assert s.start - 1 <= at[0] <= s.stop
        errors.append(max(abs((r.start + r.stop) / 2 - at[1]), abs((c.start + c.stop) / 2 - at[2])) / 128)
    assert np.median(errors) < 0.06  # the window's half-side is 0.175


def test_variants_move_the_view_by_the_offsets_they_report():
    """The shifted variants' answers are moved back by their offsets; a wrong sign would pull every answer apart."""
    view = np.zeros((1, 64, 64), np.float32)
    view[0, 20, 30] = 0.5
    many, offsets = variants(view)
    np.testing.assert_allclose(many[0, 1], 1 - view[0])
    np.testing.assert_allclose(many[0, 2:4].max((1, 2)), [np.sqrt(0.5), 0.25])
    for k in range(4, len(offsets)):
        r, c = np.unravel_index(many[0, k].argmax(), (64, 64))
        np.testing.assert_allclose(((r - 20) / 64, (c - 30) / 64), offsets[k])


def test_localiser_answers_alike_on_a_knee_and_falls_back_to_the_prior_where_unsure(monkeypatch):
    """On a knee it can read, every variant gives the same answer; where they disagree, the window is centred on
    the training set's mean position instead."""
    exam = render_exam(12, 5, "train", Labels(1, 0, 0), 128, 0.5, family("morphed"))
    vol, at = exam.volumes["sagittal"], acl_midpoint(exam)
    box = knee_box(vol)
    view, (r0, c0, side) = knee_view(vol, box)
    weights = load_localiser(SHIPPED)
    centre, spread = located(view[None], weights)
    assert spread[0] < region.UNSURE / 5
    assert max(abs(r0 + centre[0, 0] * side - at[1]), abs(c0 + centre[0, 1] * side - at[2])) < 0.06 * 128
    prior = (r0 + weights["prior"][0] * side, c0 + weights["prior"][1] * side)
    assert max(abs(a - b) for a, b in zip(acl_centre(vol, box), prior, strict=True)) > 1  # the localiser's own
    monkeypatch.setattr(region, "located", lambda v, w: (np.full((1, 2), 0.5), np.full(1, region.UNSURE * 2)))
    np.testing.assert_allclose(acl_centre(vol, box), prior, atol=1e-4)


def test_acl_mode_in_the_record_the_preparation_and_the_cache(tmp_path: Path):
    root = tmp_path / "MRNet-v1.0"
    generate(root, SynthSpec(train=3, valid=1, size=96, seed=2, workers=1, family="varied"))
    recs = list_exams(root, "train", "sagittal", "acl")
    vol = load_volume(recs[0].path)
    pre = Preprocessing(16, crop=0.35, slab=0.4, mean=0.3, std=0.2, roi="acl")
    assert Preprocessing.from_meta(pre.to_meta()) == pre
    want = np.clip(np.rint(resize_slices(robust_minmax(vol[acl_region(vol, 0.35, 0.4)]), 16) * 255), 0, 255)
    np.testing.assert_array_equal(pre.prepare(vol), want.astype(np.uint8))
    assert len(pre.prepare(vol)) == knee_region(vol, 0.35, 0.4)[0].stop - knee_region(vol, 0.35, 0.4)[0].start
    cache = build_cache(recs, 16, tmp_path / "c", "t", 0.35, 0.4, mode="acl")
    build_cache(recs, 16, tmp_path / "c", "t", 0.35, 0.4, mode="knee")
    assert len(list((tmp_path / "c").glob("t-16-*.npy"))) == 2  # the mode is part of the cache's key
    full = np.concatenate([prepare_volume(load_volume(r.path), 16, 0.35, 0.4, mode="acl") for r in recs])
    np.testing.assert_array_equal(np.asarray(cache.data), full)


def test_the_users_window_survives_a_pretrained_encoder_with_roi_acl():
    """The shipped encoder's crop is the scale it learnt (0.35 x the field about the ACL); with data.roi=acl the
    window is the user's, about the knee box the encoder's scale holds."""
    enc = encoder_init("builtin:cpu")
    assert (enc.preprocessing.roi, enc.preprocessing.crop) == ("acl", 0.35)
    acl = enc.configure(load_config("finetune/demo", ["data.roi=acl", "data.crop=0.3"]))
    assert acl.data.crop == 0.3 and acl.data.img_size == enc.preprocessing.img_size
    assert init_preprocessing(enc, acl, 0.0, 1.0).crop == 0.3
    knee = enc.configure(load_config("finetune/demo", ["data.roi=knee", "data.crop=0.3"]))
    assert init_preprocessing(enc, knee, 0.0, 1.0).crop == enc.preprocessing.crop != 0.3


def test_make_localiser_trains_on_a_family_set_and_writes_what_preparation_reads(tmp_path: Path):
    from sbssl.weights import make_localiser

    root = tmp_path / "varied"
    generate(root, SynthSpec(train=6, valid=2, size=64, seed=3, workers=1, family="varied"))
    at = set_acl_midpoints(root, "valid")
    assert sorted(at) == ["0006", "0007"]
    out = make_localiser([root], epochs=2, out=tmp_path / "loc.safetensors")
    weights = load_localiser(out)
    assert set(weights) == set(load_localiser(SHIPPED))
    vol = load_volume(list_exams(root, "valid", "sagittal", "acl")[0].path)
    (fr, fc), = localise(knee_view(vol, knee_box(vol))[0][None], weights)
    assert 0 < fr < 1 and 0 < fc < 1
    s, r, c = acl_region(vol, 0.35, 0.4, path=out)
    assert r.stop - r.start == round(0.35 * vol.shape[1]) == c.stop - c.start


def test_missing_or_foreign_localiser_is_one_line_naming_the_file(tmp_path: Path):
    from safetensors.numpy import save_file

    with pytest.raises(FileNotFoundError, match="nothing.safetensors.*data.roi=acl"):
        load_localiser(tmp_path / "nothing.safetensors")
    save_file({"conv0.weight": np.zeros((1, 1, 3, 3), np.float32)}, str(tmp_path / "old.safetensors"))
    with pytest.raises(ValueError, match="old.safetensors.*prior"):
        load_localiser(tmp_path / "old.safetensors")


def test_acl_preparation_is_torch_free():
    """An exported model prepares exams without torch; the ACL's region must not bring it in."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom sbssl.data.preprocessing import Preprocessing\n"
            "vol = np.random.default_rng(0).random((12, 80, 80)).astype(np.float32)\n"
            "x = Preprocessing(16, crop=0.35, slab=0.4, roi='acl').prepare(vol)\n"
            "assert x.shape[1:] == (16, 16) and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_acl_region_is_refused_outside_sagittal_series():
    from sbssl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.roi.*sagittal"):
        load_config(None, ["data.roi=acl", "data.plane=coronal"])
    with pytest.raises(ConfigError, match=r"data\.roi.*data\.roi=knee"):
        load_config("finetune/demo", ["data.task=meniscus"])
    assert load_config("finetune/demo", ["data.task=meniscus", "data.roi=knee"]).data.roi == "knee"
    assert load_config(None, ["data.roi=acl"]).data.roi == "acl"


def test_a_run_from_an_encoder_is_evaluated_on_the_acl_window_it_was_trained_on(tiny_set: Path, gmml_roi_run: Path,
                                                                                 tmp_path: Path):
    """The encoder's crop (0.5) must not come back when the run is loaded for evaluation, explanation or export:
    the slice caches of valid are cut from the loaded config, which follows the run's preprocessing record."""
    from sbssl.engine.inference import load_ensemble
    from sbssl.workflow import finetune

    from .conftest import FT

    out = tmp_path / "acl"
    over = [*FT, "finetune.ensemble=1", "train.epochs=1", f"init={gmml_roi_run}", "data.roi=acl", "data.crop=0.35",
            "trainer.accelerator=cpu"]
    finetune(load_config(None, over), tiny_set, out)
    ens = load_ensemble(out)
    assert ens.pre.roi == "acl" and ens.pre.crop == 0.35 and ens.pre.img_size == 16
    assert (ens.cfg.data.roi, ens.cfg.data.crop, ens.cfg.data.img_size) == ("acl", 0.35, 16)
