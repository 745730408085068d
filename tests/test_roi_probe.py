"""Region of interest, anatomical flips, slice features, the conv stem, linear probing, shipped encoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sbssl.augment import SliceAugment, flip_probability
from sbssl.config import load_config
from sbssl.data.layout import list_exams
from sbssl.data.prepare import prepare_volume, roi
from sbssl.engine.inference import load_ensemble
from sbssl.errors import SbsslError
from sbssl.models.build import build_classifier
from sbssl.models.encoder_file import encoder_init
from sbssl.models.vit import create_encoder, set_slice_feature
from sbssl.predict import predict
from sbssl.workflow import finetune

from .conftest import FT


def test_roi_keeps_the_central_slab_and_crop():
    vol = np.arange(20 * 10 * 8, dtype=np.float32).reshape(20, 10, 8)
    r = roi(vol, crop=0.5, slab=0.4)
    # slices at positions 0.3..0.7 of 0..19 -> 5.7..13.3 -> 6..13; rows 5 of 10 from 2, cols 4 of 8 from 2
    assert r.shape == (8, 5, 4)
    assert np.array_equal(r, vol[6:14, 2:7, 2:6])
    assert roi(vol).shape == vol.shape
    assert roi(vol[:3], slab=0.01).shape[0] == 1  # narrower than a slice: the central one
    # preprocessing scales intensities on the region itself, then resizes it
    u8 = prepare_volume(vol, 16, crop=0.5, slab=0.4)
    assert u8.shape == (8, 16, 16) and u8.max() == 255 and u8.min() == 0


def test_flip_only_where_the_mirror_is_left_right():
    assert flip_probability(0.5, "sagittal") == 0.0  # anterior <-> posterior: no scanner makes it
    assert flip_probability(0.5, "coronal") == 0.5 and flip_probability(0.5, "axial") == 0.5
    cfg = load_config(None, ["augment.flip=1.0", "augment.jitter=0", "augment.blur=0", "augment.sharpness=0",
                             "augment.crop_scale=[1.0,1.0]"])
    x = torch.rand(4, 1, 16, 16)
    sag = SliceAugment.from_config(cfg.augment, "sagittal")
    sag.crop_ratio = (1.0, 1.0)
    assert torch.allclose(sag(x), x, atol=1e-5)  # identity crop, no flip
    cor = SliceAugment.from_config(cfg.augment, "coronal")
    cor.crop_ratio = (1.0, 1.0)
    assert torch.allclose(cor(x), x.flip(-1), atol=1e-5)


@pytest.mark.parametrize("kind", ["cls", "max", "mean"])
def test_slice_features(kind: str):
    torch.manual_seed(0)
    enc = create_encoder("vit_tiny", 16, 4, 1, 0.0).eval()
    torch.nn.init.normal_(enc.norm.weight)  # a trained norm: pooling before or after it would differ
    torch.nn.init.normal_(enc.norm.bias)
    x = torch.randn(3, 1, 16, 16)
    f = set_slice_feature(enc, kind)(x)
    assert f.shape == (3, enc.embed_dim)
    tokens = enc.forward_features(x)  # the blocks, then the final norm
    want = {"cls": tokens[:, 0], "max": tokens[:, 1:].amax(1), "mean": tokens[:, 1:].mean(1)}[kind]
    assert torch.allclose(f, want, atol=1e-5)


def test_conv_stem_gives_one_token_per_patch_and_trains():
    torch.manual_seed(0)
    enc = create_encoder("vit_tiny", 32, 4, 1, 0.0, stem="conv")
    x = torch.randn(2, 1, 32, 32)
    assert enc.forward_features(x).shape == (2, 1 + 64, enc.embed_dim)
    set_slice_feature(enc, "max")(x).sum().backward()
    assert enc.patch_embed.proj[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="power-of-two"):
        create_encoder("vit_tiny", 24, 6, 1, 0.0, stem="conv")


def test_roi_and_stem_travel_with_the_encoder(gmml_roi_run: Path):
    init = encoder_init(str(gmml_roi_run))
    assert (init.meta["crop"], init.meta["slab"], init.meta["stem"]) == ("0.5", "0.6", "conv")
    asked = load_config(None, [f"init={gmml_roi_run}"])
    cfg = init.configure(asked)
    assert (cfg.data.crop, cfg.data.slab, cfg.model.stem) == (0.5, 0.6, "conv")
    assert (asked.data.crop, asked.model.stem) == (load_config().data.crop, load_config().model.stem)  # untouched
    model = build_classifier(cfg, init)
    assert torch.equal(model.encoder.patch_embed.proj[0].weight, init.weights["patch_embed.proj.0.weight"])


@pytest.mark.parametrize(("aggregator", "schedule"), [("max", ["train.epochs=3"]), ("instance", ["train.epochs=3"]),
                                                     ("instance", ["train.epochs=0", "finetune.probe_steps=40"])])
def test_linear_probe_keeps_the_encoder_and_predict_applies_the_roi(gmml_roi_run: Path, tiny_set: Path,
                                                                  tmp_path: Path, aggregator: str,
                                                                  schedule: list[str]):
    out = tmp_path / "probe"
    cfg = load_config(None, FT + [f"init={gmml_roi_run}", "finetune.freeze=true", "finetune.ensemble=1",
                                  f"finetune.aggregator={aggregator}", "finetune.slice_feature=max", *schedule])
    finetune(cfg, tiny_set, out)
    split = json.loads((out / "split.json").read_text())
    read_out_only = "train.epochs=0" in schedule  # nothing to choose: every labelled exam fits the read-out
    assert (len(split["held_out"]) == 0) == read_out_only
    assert len(split["fit"]) + len(split["held_out"]) == len(list_exams(tiny_set, "train"))
    enc0 = encoder_init(str(gmml_roi_run)).weights
    sd = load_file(str(out / "model-0.safetensors"))
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k, v in enc0.items():  # the encoder's weights are exactly the pretrained ones (its stem's batch-norm
        if not k.endswith(stats):  # statistics are re-estimated on clean slices: test_batch_norm_recalibrated)
            assert torch.equal(sd[f"encoder.{k}"], v), k
    first = load_config(None, [f"init={gmml_roi_run}", f"finetune.aggregator={aggregator}"])
    assert any(not torch.equal(sd[k], v) for k, v in build_classifier(first).state_dict().items()
               if k.startswith(("head", "aggregate")) and v.is_floating_point())  # the read-out trained
    ens = load_ensemble(out)
    assert (ens.cfg.data.crop, ens.cfg.data.slab, ens.cfg.finetune.freeze) == (0.5, 0.6, True)
    # predict on a raw volume reads the same region as training did
    vol = np.load(next((tiny_set / "valid" / "sagittal").glob("*.npy")))
    np.save(tmp_path / "exam.npy", vol)
    assert predict(out, [tmp_path / "exam.npy"], tmp_path / "pred", overlays=False) == 0
    assert (tmp_path / "pred" / "predictions.csv").read_text().count("\n") == 2


def test_unknown_builtin_encoder_is_one_clear_error():
    with pytest.raises(SbsslError, match="builtin:nope"):
        encoder_init("builtin:nope")


def _lifted_tokens(n_exams: int = 24, slices: int = 3, tokens: int = 4, dim: int = 8, seed: int = 0):
    """Token features of exams whose positives have one token of one slice lifted along a direction."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_exams * slices, tokens, dim, generator=g)
    labels = np.arange(n_exams) % 3 == 0
    for e in np.flatnonzero(labels):
        feats[e * slices + e % slices, e % tokens, 0] += 4.0
    return feats, labels.astype(int)


def _toy_probe():
    """A tiny instance-scoring classifier and a feature table of lifted tokens, for read-out tests."""
    from sbssl.data.cache import SliceCache
    from sbssl.engine.inference import FeatureTable
    from sbssl.models.slice_classifier import InstanceAggregator, SliceClassifier

    feats, labels = _lifted_tokens()
    n, slices = len(labels), feats.shape[0] // len(labels)
    torch.manual_seed(0)  # the read-out's initial weights: a minibatch fit's outcome depends on them
    cache = SliceCache(np.zeros((len(feats), 1, 1), np.uint8), np.arange(n + 1) * slices, [str(i) for i in range(n)],
                       0.0, 1.0)
    model = SliceClassifier(create_encoder("vit_tiny", 8, 4, 1, 0.0), "instance", slices)
    model.aggregate = InstanceAggregator(feats.shape[-1])  # scores the 8-dim toy tokens
    return model, FeatureTable(feats, torch.arange(len(feats))), cache, feats, labels


@pytest.mark.parametrize("solver", ["lbfgs", "adamw"])
def test_fit_readout_learns_from_the_table_alone(solver: str):
    from sbssl.engine.probe import fit_readout

    model, table, cache, feats, labels = _toy_probe()
    n, slices = len(labels), feats.shape[0] // len(labels)
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    losses = fit_readout(model, table, cache, labels, np.arange(n), steps=150, lr=5e-2, batch_exams=16, seed=0,
                         solver=solver)
    k = 1 if solver == "lbfgs" else 10  # L-BFGS's objective is the full-batch one; AdamW's, a batch's
    assert np.mean(losses[-k:]) < 0.5 * np.mean(losses[:k])
    model.eval()
    with torch.no_grad():
        s = model.classify(feats, torch.full((n,), slices))[:, 1].numpy()
    assert s[labels == 1].min() > s[labels == 0].max()  # the lifted token decides every exam
    assert all(torch.equal(v, enc_before[k]) for k, v in model.encoder.state_dict().items())


@pytest.mark.parametrize("solver", ["lbfgs", "adamw"])
def test_readout_prior_shrinks_weights_not_bias_and_fades_with_labels(solver: str):
    from sbssl.engine.probe import fit_readout, readout_parameters, weight_penalty

    norms = {}
    for l2 in (0.0, 30.0):
        model, table, cache, _, labels = _toy_probe()
        fit_readout(model, table, cache, labels, np.arange(len(labels)), steps=150, lr=5e-2, batch_exams=16, seed=0,
                    l2=l2, solver=solver)
        norms[l2] = float(model.aggregate.score.weight.detach().norm())
    assert norms[30.0] < 0.5 * norms[0.0]  # the prior pulls the scorer towards 0
    model, *_ = _toy_probe()
    params = readout_parameters(model)
    w2 = float(model.aggregate.score.weight.detach().pow(2).sum())
    assert float(weight_penalty(params, 4.0, 8).detach()) == pytest.approx(0.5 * w2)  # l2 / n * |W|^2, the bias free
    assert float(weight_penalty(params, 4.0, 80).detach()) == pytest.approx(0.05 * w2)  # ten times the labels: a tenth
    assert weight_penalty(params, 0.0, 8) == 0.0


def test_lbfgs_restarts_keep_the_lowest_objective_and_are_deterministic():
    import torch.nn.functional as F

    from sbssl.engine.probe import exam_weights, fit_readout

    def objective(model, feats, labels) -> float:
        y = torch.as_tensor(labels)
        with torch.no_grad():
            ce = F.cross_entropy(model.classify(feats, torch.full((len(y),), feats.shape[0] // len(y))), y,
                                 reduction="none")
        return float((ce * exam_weights(y, True)).mean())

    fitted = {}
    for restarts in (1, 6, 6):
        model, table, cache, feats, labels = _toy_probe()
        fit_readout(model, table, cache, labels, np.arange(len(labels)), steps=5, lr=0.0, batch_exams=0, seed=3,
                    restarts=restarts)
        model.eval()
        fitted.setdefault(restarts, []).append((objective(model, feats, labels),
                                                model.aggregate.score.weight.detach().clone()))
    assert fitted[6][0][0] <= fitted[1][0][0] + 1e-6  # the first start is among the six
    assert torch.equal(fitted[6][0][1], fitted[6][1][1])  # the same seed, the same read-out


def test_lp_ft_fits_the_readout_then_fine_tunes_everything(gmml_roi_run: Path, tiny_set: Path, tmp_path: Path):
    import json

    out = tmp_path / "lpft"
    cfg = load_config(None, FT + [f"init={gmml_roi_run}", "finetune.ensemble=1", "finetune.aggregator=instance",
                                  "finetune.probe_steps=20", "train.epochs=1"])
    finetune(cfg, tiny_set, out)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [-1, 0] and log[0]["phase"] == "probe"
    assert 0.0 <= log[0]["heldout_auc"] <= 1.0
    sd = load_file(str(out / "model-0.safetensors"))
    enc0 = encoder_init(str(gmml_roi_run)).weights
    assert any(not torch.equal(sd[f"encoder.{k}"], v) for k, v in enc0.items() if v.is_floating_point())
    with pytest.raises(SbsslError, match="train.epochs"):
        load_config(None, ["train.epochs=0"])  # nothing would train


def test_batch_norm_recalibrated_on_clean_slices(gmml_roi_run: Path, tiny_set: Path):
    """GMML estimated the stem's statistics on corrupted inputs; fine-tuning re-estimates them on its own slices."""
    from sbssl.data.cache import slice_cache_for
    from sbssl.data.datasets import gather_index
    from sbssl.engine.finetune import recalibrate_batch_norm

    init = encoder_init(str(gmml_roi_run))
    cfg = init.configure(load_config(None, [f"init={gmml_roi_run}", "finetune.slices=4"]))
    model = build_classifier(cfg, init)
    cache, records = slice_cache_for(cfg, tiny_set, "train")
    exams = np.arange(len(records))
    pre = init.preprocessing
    recalibrate_batch_norm(model, cache, exams, pre, "cpu")
    rows = np.unique(gather_index(cache, exams, model.slices)[0])
    x = pre.normalise(torch.from_numpy(cache.data[rows])[:, None])
    conv, bn = model.encoder.patch_embed.proj[0], model.encoder.patch_embed.proj[1]
    with torch.no_grad():
        h = conv(x)
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, h.var((0, 2, 3)), rtol=1e-2, atol=1e-4)
    sd = init.weights
    assert not torch.allclose(bn.running_mean, sd["patch_embed.proj.1.running_mean"], atol=1e-3)
    assert torch.equal(bn.weight, sd["patch_embed.proj.1.weight"]) and bn.momentum == 0.1


def test_frozen_batch_norm_keeps_an_exams_features_independent_of_its_batch(gmml_roi_run: Path, tiny_set: Path,
                                                                             tmp_path: Path):
    """finetune.frozen_bn: in training mode the stem's batch norms still normalise by their running statistics
    (an exam scores the same alone and beside others, and the statistics do not move), their scales still learn;
    without it, batch statistics make an exam's score depend on its batch-mates. Fine-tuning sets it from an
    encoder only."""
    init = encoder_init(str(gmml_roi_run))
    cfg = init.configure(load_config(None, [f"init={gmml_roi_run}", "finetune.slices=4", "model.drop_path=0",
                                            "finetune.aggregator=max", "finetune.slice_feature=max"]))
    torch.manual_seed(0)
    x, lengths = torch.randn(3 * 4, 1, 16, 16), torch.tensor([4, 4, 4])
    for frozen in (True, False):
        model = build_classifier(cfg, init)
        model.frozen_bn = frozen
        model.train()
        bn = model.encoder.patch_embed.proj[1]
        before = bn.running_mean.clone()
        alone = model(x[:4], lengths[:1])
        together = model(x, lengths)[:1]
        assert torch.allclose(alone, together, atol=1e-5) == frozen
        assert torch.equal(bn.running_mean, before) == frozen and model.encoder.training and bn.weight.requires_grad
    out = tmp_path / "ft"
    finetune(load_config(None, [*FT, f"init={gmml_roi_run}", "finetune.ensemble=1", "train.epochs=1",
                                "finetune.frozen_bn=true"]), tiny_set, out)
    from sbssl.data.cache import slice_cache_for
    from sbssl.engine.finetune import recalibrate_batch_norm

    fresh = build_classifier(cfg, init)
    cache, records = slice_cache_for(cfg, tiny_set, "train")
    recalibrate_batch_norm(fresh, cache, np.arange(len(records)), init.preprocessing, "cpu")
    sd, key = load_file(out / "model-0.safetensors"), "encoder.patch_embed.proj.1."
    assert torch.allclose(sd[key + "running_mean"], fresh.state_dict()[key + "running_mean"], atol=1e-5)
    assert not torch.equal(sd[key + "weight"], init.weights["patch_embed.proj.1.weight"])  # its scale learnt


def test_kept_batch_norm_statistics_are_the_encoders(gmml_roi_run: Path, tiny_set: Path, tmp_path: Path):
    """finetune.recalibrate_bn=false with frozen_bn: the stem normalises by the statistics it was pretrained with,
    in the read-out and in fine-tuning, and the saved classifier still holds them (its scales learn)."""
    init = encoder_init(str(gmml_roi_run))
    out = tmp_path / "kept"
    finetune(load_config(None, [*FT, f"init={gmml_roi_run}", "finetune.ensemble=1", "train.epochs=1",
                                "finetune.frozen_bn=true", "finetune.recalibrate_bn=false"]), tiny_set, out)
    sd, key = load_file(out / "model-0.safetensors"), "patch_embed.proj.1."
    for stat in ("running_mean", "running_var"):
        assert torch.equal(sd["encoder." + key + stat].float(), init.weights[key + stat].float())
    assert not torch.equal(sd["encoder." + key + "weight"], init.weights[key + "weight"])


def test_the_demo_recipe_keeps_a_vits_statistics_and_the_cnn_recipe_its_own():
    """The shipped GMML recipe keeps the encoder's batch-norm statistics (chosen on selection sets, 2026-12-07);
    the CNN's recipe, also when started from a GMML CNN encoder, re-estimates and trains them as it was chosen."""
    from sbssl.demo import ARMS

    vit = load_config("finetune/demo", ARMS["gmml"]).finetune
    cnn = load_config("finetune/demo", [*ARMS["cnn"], "init=runs/pre-cnn"]).finetune
    assert (vit.recalibrate_bn, vit.frozen_bn) == (False, True)
    assert (cnn.recalibrate_bn, cnn.frozen_bn) == (True, False)


def test_the_demo_recipe_fits_every_exam_in_four_of_five_members_and_the_demo_runs_two_sharing_a_fifth():
    """finetune/demo is the paper's five-member ensemble as a cross-validation (chosen on selection sets,
    2026-12-07): each labelled exam chooses one member's epoch and trains the other four. The demo keeps its two
    members on one shared fifth (its time budget); the baselines one member each."""
    from sbssl.demo import ARMS, FULL
    from sbssl.engine.finetune import member_splits

    labels = (np.arange(200) % 5 == 0).astype(int)  # 40 positives, MRNet's ACL prevalence in train
    used = np.arange(200)
    splits = member_splits(load_config("finetune/demo", ARMS["gmml"]), labels, used)
    fitted, held = np.zeros(200, int), np.zeros(200, int)
    for fit, out in splits:
        fitted[fit] += 1
        held[out] += 1
        assert labels[out].sum() == 8  # stratified: each fifth holds a fifth of the positives
    assert len(splits) == 5 and (fitted == 4).all() and (held == 1).all()
    demo = member_splits(load_config("finetune/demo", [*FULL.finetune, *ARMS["gmml"]]), labels, used)
    assert len(demo) == 2 and all(np.array_equal(a[1], demo[0][1]) for a in demo) and len(demo[0][1]) == 40
    for arm in ("scratch", "cnn"):
        assert len(member_splits(load_config("finetune/demo", [*FULL.finetune, *ARMS[arm]]), labels, used)) == 1
