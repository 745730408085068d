"""Stage 2: aggregators, oversampling, hold-out, metrics, ensemble files, init, baselines."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, roc_auc_score

from sbssl.config import load_config
from sbssl.data.datasets import resample_index
from sbssl.engine.finetune import choose_on_heldout, member_splits
from sbssl.engine.sampling import (
    holdout_can_rank,
    labelled_subset,
    oversampled_order,
    stratified_folds,
    stratified_holdout,
)
from sbssl.engine.schedules import param_groups
from sbssl.errors import SbsslError
from sbssl.evaluation.metrics import auc_with_ci, exam_metrics, paired_auc_difference, seed_averaged_difference
from sbssl.evaluation.report_files import paired_runs_over_seeds, read_predictions, write_predictions
from sbssl.models.build import build_classifier
from sbssl.models.encoder_file import encoder_init
from sbssl.models.slice_classifier import InstanceAggregator, MRNetCNN, SliceClassifier
from sbssl.models.vit import create_encoder
from sbssl.registry import AGGREGATORS
from sbssl.workflow import finetune

from .conftest import FT, TINY_VIT, assert_user_error, run_cli


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregators_with_exams_of_different_lengths(name: str):
    torch.manual_seed(0)
    enc = create_encoder("vit_tiny", 32, 8, 1, 0.0)
    model = SliceClassifier(enc, name, slices=4 if name == "concat" else 0).eval()
    lengths = torch.tensor([3, 5, 1])
    sel = resample_index(lengths, model.slices) if model.slices else None
    x = torch.randn(int(lengths.sum()), 1, 32, 32)
    if sel is not None:  # concat: each exam resampled to f = 4 slices
        x = x[sel]
        lengths = torch.full((3,), 4)
    logits, weights = model(x, lengths, return_weights=True)
    assert logits.shape == (3, 2)
    if name == "attention":
        assert weights.shape == (3, 5)
        assert torch.allclose(weights.sum(1), torch.ones(3)) and weights[2, 1:].eq(0).all()
    # an exam's logits do not depend on the other exams of the batch
    alone = model(x[:4] if sel is not None else x[:3], lengths[:1].clone().fill_(4 if sel is not None else 3))
    assert torch.allclose(alone, logits[:1], atol=1e-5)


def test_instance_aggregator_scores_every_token_then_takes_the_max():
    torch.manual_seed(0)
    agg = InstanceAggregator(6).eval()
    feats, lengths = torch.randn(5, 4, 6), torch.tensor([2, 3])  # 5 slices of 4 tokens, exams of 2 and 3 slices
    score, weights = agg(feats, lengths)
    tok = agg.token_scores(feats)
    lme = [(torch.logsumexp(4 * t.flatten(), 0) - math.log(t.numel())) / 4 for t in (tok[:2], tok[2:])]
    assert torch.allclose(score[:, 0], torch.stack(lme), atol=1e-5)  # a smooth max over all the exam's tokens
    assert all(t.mean() < s < t.max() for t, s in zip((tok[:2], tok[2:]), score[:, 0], strict=True))
    assert torch.allclose(weights.sum(1), torch.ones(2)) and weights[0, 2] == 0  # the padded slice weighs 0
    # one token made strongly positive on the scorer's direction lifts its own exam only
    lifted = feats.clone()
    lifted[3, 1] += 50 * agg.score.weight[0] / agg.score.weight.norm()
    score2, _ = agg(lifted, lengths)
    assert score2[1, 0] > score[1, 0] + 5 and torch.equal(score2[0], score[0])
    # in a classifier: softmax of the two logits is the sigmoid of the exam score
    model = SliceClassifier(create_encoder("vit_tiny", 32, 8, 1, 0.0), "instance").eval()
    x = torch.randn(5, 1, 32, 32)
    assert model.slice_features(x).shape == (5, 16, 192)  # every patch token, no class token
    logits = model(x, lengths)
    s, _ = model.aggregate(model.slice_features(x), lengths)
    assert torch.allclose(logits.softmax(1)[:, 1], torch.sigmoid(s[:, 0]), atol=1e-6)
    with pytest.raises(ValueError, match="patch tokens"):
        SliceClassifier(MRNetCNN(1, 32), "instance")


def test_resample_index_spans_each_exam():
    idx = resample_index(torch.tensor([3, 10, 1]), 4).view(3, 4)
    assert idx[0].tolist() == [0, 1, 1, 2]  # short exams repeat slices (rounded linspace)
    assert idx[1, 0] == 3 and idx[1, -1] == 12
    assert idx[2].tolist() == [13] * 4


def test_oversampling_balances_classes():
    labels = np.array([1] * 5 + [0] * 20)
    order = oversampled_order(labels, np.arange(25), torch.Generator().manual_seed(0))
    assert (labels[order] == 1).sum() == (labels[order] == 0).sum() == 20
    assert set(order[labels[order] == 0]) == set(range(5, 25))  # every majority exam exactly once
    plain = oversampled_order(labels, np.arange(25), torch.Generator().manual_seed(0), oversample=False)
    assert sorted(plain) == list(range(25))


def test_holdout_is_stratified_and_disjoint():
    labels = np.array([1] * 10 + [0] * 30)
    fit, held = stratified_holdout(labels, 0.2, seed=0)
    assert not set(fit) & set(held) and len(fit) + len(held) == 40
    assert labels[held].sum() == 2 and (labels[held] == 0).sum() == 6


def test_stratified_folds_partition_every_class_evenly():
    labels = np.array([1] * 11 + [0] * 29)
    fold = stratified_folds(labels, 5, seed=0)
    pos, neg = np.bincount(fold[labels == 1], minlength=5), np.bincount(fold[labels == 0], minlength=5)
    assert pos.max() - pos.min() <= 1 and neg.max() - neg.min() <= 1 and pos.min() >= 2  # balanced, none empty
    assert np.array_equal(fold, stratified_folds(labels, 5, seed=0))
    assert not np.array_equal(fold, stratified_folds(labels, 5, seed=1))


def test_member_holdout_gives_each_member_its_own_fold_and_shared_one_part():
    labels = np.array([1] * 40 + [0] * 160)
    used = np.arange(200)[::-1]  # labelled_subset's order need not be sorted
    shared = member_splits(load_config(None, ["finetune.ensemble=5"]), labels, used)
    assert all(np.array_equal(h, shared[0][1]) for _, h in shared) and len(shared[0][1]) == 40
    member = member_splits(load_config(None, ["finetune.ensemble=7", "finetune.holdout=member"]), labels, used)
    helds = [set(h) for _, h in member]
    assert helds[5] == helds[0] and helds[6] == helds[1]  # member m holds out fold m mod 5
    assert set().union(*helds[:5]) == set(used) and sum(map(len, helds[:5])) == 200  # the folds partition
    for fit, held in member:
        assert not set(fit) & set(held) and len(fit) + len(held) == 200 and labels[held].sum() == 8


def test_heldout_part_chooses_only_when_it_can_rank():
    """select=auto: a held-out fifth chooses the epoch only when it holds min_heldout exams of each class."""
    few, many = np.array([1] * 9 + [0] * 41), np.array([1] * 37 + [0] * 163)  # 50 and 200 labels at 18.4%
    assert not holdout_can_rank(few, 0.2, 5) and holdout_can_rank(many, 0.2, 5)
    assert not holdout_can_rank(1 - few, 0.2, 5)  # the minority class counts, whichever it is (abnormal: negatives)
    assert holdout_can_rank(few, 0.2, 2) and not holdout_can_rank(many, 0.1, 5)

    def chooses(y: np.ndarray, *over: str) -> list[bool]:
        return [choose_on_heldout(load_config(None, [f"finetune.select={s}", *over]), y)
                for s in ("auc", "last", "auto")]

    assert chooses(few) == [True, False, False] and chooses(many) == [True, False, True]
    assert chooses(many, "train.epochs=0", "finetune.probe_steps=5") == [False] * 3  # a read-out alone


def test_too_few_labels_to_choose_by_fit_every_exam_and_keep_the_last_epoch(tiny_set: Path, tmp_path: Path):
    out = tmp_path / "auto"
    finetune(load_config(None, [*TINY_VIT, *FT, "finetune.ensemble=1", "init=scratch", "finetune.select=auto"]),
             tiny_set, out)
    split = json.loads((out / "split.json").read_text())
    assert split["held_out"] == [] and len(split["fit"]) == 24
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["best_epoch"] for r in log] == [0, 1] and all(math.isnan(r["heldout_auc"]) for r in log)
    from safetensors import safe_open

    with safe_open(str(out / "model-0.safetensors"), "pt") as f:
        assert f.metadata()["best_epoch"] == "1"


def test_member_holdout_trains_each_member_on_the_others_folds_and_fuses_out_of_fold(tiny_set: Path,
                                                                                      tmp_path: Path):
    out = tmp_path / "folds"
    finetune(load_config(None, [*TINY_VIT, *FT, "finetune.ensemble=2", "init=scratch", "finetune.select=auc",
                                "finetune.holdout=member", "finetune.val_fraction=0.5"]), tiny_set, out)
    split = json.loads((out / "split.json").read_text())
    a, b = (set(split["members"][s]) for s in ("0", "1"))
    assert split["held_out"] == [] and not a & b and len(a | b) == len(split["fit"]) == 24  # two halves
    for seed, held in (("0", a), ("1", b)):
        meta = safe_open_meta(out / f"model-{seed}.safetensors")
        assert int(meta["heldout_exams"]) == len(held) and math.isfinite(float(meta["heldout_auc"]))
    from sbssl.engine.inference import load_ensemble, score_split
    from sbssl.evaluation.fusion import fuse, out_of_fold_probs

    cases = sorted(a | b)  # each exam scored by the one member that held it out, never by the one fitted on it
    _, oof = out_of_fold_probs(out, tiny_set, cases)
    ens = load_ensemble(out)
    _, probs = score_split(ens, tiny_set, "train", cases)
    by_seed = dict(zip(ens.seeds, probs, strict=True))
    want = [by_seed[0][i] if c in a else by_seed[1][i] for i, c in enumerate(cases)]
    np.testing.assert_allclose(oof, want, atol=1e-6)
    assert not np.allclose(oof, probs.mean(0))
    other = tmp_path / "coronal"  # the same run standing in for a second plane
    shutil.copytree(out, other)
    (other / "config.yaml").write_text((out / "config.yaml").read_text().replace("sagittal", "coronal"))
    fuse([out, other], tmp_path / "fused", tiny_set)
    assert json.loads((tmp_path / "fused" / "fusion.json").read_text())["fitted_on"]["n"] == 24  # every exam


def test_labelled_subsets_are_stratified_and_nested():
    labels = np.array([1] * 20 + [0] * 80)
    subsets = [labelled_subset(labels, n, seed=3) for n in (10, 25, 50, 100)]
    assert [len(s) for s in subsets] == [10, 25, 50, 100]
    assert [int(labels[s].sum()) for s in subsets] == [2, 5, 10, 20]
    assert all(set(a) <= set(b) for a, b in zip(subsets, subsets[1:], strict=False))
    rare = np.array([1] + [0] * 50)
    assert rare[labelled_subset(rare, 8)].sum() == 1  # never more positives than exist


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    m = exam_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert m["sensitivity"] == pytest.approx(((p >= 0.5) & (y == 1)).sum() / (y == 1).sum())
    assert m["specificity"] == pytest.approx(((p < 0.5) & (y == 0)).sum() / (y == 0).sum())


def test_bootstrap_interval_brackets_and_narrows():
    rng = np.random.default_rng(1)
    widths = []
    for n in (60, 600):
        y = np.repeat([0, 1], n // 2)
        p = y * 0.8 + rng.normal(0, 0.6, n)
        auc, (lo, hi) = auc_with_ci(y, p)
        assert lo < auc < hi
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]
    same = paired_auc_difference(y, p, p)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
    better = paired_auc_difference(y, y + rng.normal(0, 0.3, len(y)), p)
    assert better["ci95"][0] > 0


def test_seed_averaged_difference_holds_the_spread_between_training_seeds(tmp_path: Path):
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], [90, 30])
    base = y * 0.8 + rng.normal(0, 1, (3, len(y)))  # recipe b at seeds 0, 1, 2
    steady = np.stack([y * 1.2 + rng.normal(0, 1, len(y))] * 3)  # a recipe that every seed trains alike
    one = paired_auc_difference(y, steady[0], base[0])
    d1 = seed_averaged_difference(y, steady[:1], base[:1])
    assert d1["difference"] == pytest.approx(one["difference"]) and d1["ci95"] == d1["ci95_exams"] == one["ci95"]
    same = seed_averaged_difference(y, steady, np.stack([base[0]] * 3))
    assert same["ci95"] == pytest.approx(same["ci95_exams"]) and same["seed_sd"] == 0
    # a recipe whose seeds land far apart: the mean is the seeds' mean, and only the two-level interval widens
    erratic = np.stack([y * s + rng.normal(0, 1, len(y)) for s in (0.2, 1.2, 2.4)])
    d = seed_averaged_difference(y, erratic, base)
    aucs = [roc_auc_score(y, q) for q in erratic]
    assert d["difference"] == pytest.approx(np.mean(aucs) - np.mean([roc_auc_score(y, q) for q in base]))
    assert d["per_seed"] == pytest.approx([a - roc_auc_score(y, q) for a, q in zip(aucs, base, strict=True)])
    lo, hi = d["ci95"]
    assert lo < d["ci95_exams"][0] < d["ci95_exams"][1] < hi and hi - lo > 1.5 * np.diff(d["ci95_exams"])[0]
    # run folders: every seed's pair must score the same exams
    cases = [f"{i:04d}" for i in range(len(y))]
    runs = {}
    for name, probs in (("a", erratic), ("b", base), ("ra", erratic[:, ::-1]), ("rb", base[:, ::-1])):
        runs[name] = [tmp_path / f"{name}{k}" for k in range(3)]
        flip = name.startswith("r")
        for run, q in zip(runs[name], probs, strict=True):
            write_predictions(run / "predictions.csv", cases[::-1] if flip else cases, q, y[::-1] if flip else y)
    assert paired_runs_over_seeds(runs["a"], runs["b"])["difference"] == pytest.approx(d["difference"])
    with pytest.raises(SbsslError, match="a0/predictions.csv and .*rb0/predictions.csv score different exams or"):
        paired_runs_over_seeds(runs["a"], runs["rb"])  # within a seed's pair
    with pytest.raises(SbsslError, match="ra1/predictions.csv and .*a0/predictions.csv score different exams$"):
        paired_runs_over_seeds([runs["a"][0], runs["ra"][1]], [runs["b"][0], runs["rb"][1]])  # across seeds


def test_end_to_end_files_and_ensemble_average(ft_run: Path):
    m = json.loads((ft_run / "metrics.json").read_text())
    for k in ("task", "plane", "split", "n", "positives", "accuracy", "auc", "auc_ci95", "sensitivity",
              "specificity", "threshold", "members", "init"):
        assert k in m
    assert m["split"] == "valid" and m["members"] == 2 and m["init"].startswith("gmml:")
    assert m["n"] == 12 and len(m["member_metrics"]) == 2
    rows = list(csv.DictReader((ft_run / "predictions.csv").read_text().splitlines()))
    assert list(rows[0]) == ["case", "probability", "label"] and rows[0]["case"] == "0024"
    members = list(csv.DictReader((ft_run / "predictions_members.csv").read_text().splitlines()))
    for r, mr in zip(rows, members, strict=True):
        assert float(r["probability"]) == pytest.approx((float(mr["member_0"]) + float(mr["member_1"])) / 2,
                                                        abs=2e-6)
    assert (ft_run / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in ft_run.glob("model-*.safetensors")) == ["model-0.safetensors",
                                                                          "model-1.safetensors"]
    split = json.loads((ft_run / "split.json").read_text())
    assert not set(split["fit"]) & set(split["held_out"])  # model selection never sees the valid split
    assert all(int(c) < 24 for c in split["fit"] + split["held_out"])


def test_layer_decay_scales_the_conv_stem_least_and_the_read_out_fully():
    """finetune.layer_decay (BEiT/MAE): block i at decay**(depth + 1 - (i + 1)), the stem and embeddings (layer 0)
    at the smallest rate, the instance read-out and final norm at the full one; decay 1.0 leaves one scale."""
    cfg = load_config(None, [*TINY_VIT, "model.stem=conv", "model.patch_size=4", "finetune.aggregator=instance"])
    model = build_classifier(cfg)
    depth = len(model.encoder.blocks)
    groups = param_groups(model, 0.5, depth)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    stem = [n for n in named if "patch_embed.proj" in n]
    assert stem and {scale[id(named[n])] for n in stem} == {0.5 ** (depth + 1)}
    assert scale[id(model.encoder.blocks[0].attn.qkv.weight)] == 0.5 ** depth
    assert scale[id(model.encoder.blocks[depth - 1].mlp.fc2.weight)] == 0.5
    head = [n for n in named if not n.startswith("encoder.")]
    assert head and {scale[id(named[n])] for n in head} == {1.0}
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert {g["lr_scale"] for g in param_groups(model, 1.0, depth)} == {1.0}


def test_gmml_init_loads_the_pretrained_encoder(gmml_run: Path):
    init = encoder_init(str(gmml_run))
    cfg = init.configure(load_config(None, FT))
    assert (cfg.model.name, cfg.data.img_size, cfg.model.patch_size) == ("vit_tiny", 32, 8)
    torch.manual_seed(0)
    scratch = build_classifier(cfg)
    torch.manual_seed(0)
    loaded = build_classifier(cfg, init)
    sd = load_file(gmml_run / "encoder.safetensors")
    assert torch.equal(loaded.encoder.blocks[3].attn.qkv.weight, sd["blocks.3.attn.qkv.weight"])
    assert not torch.equal(loaded.encoder.blocks[3].attn.qkv.weight, scratch.encoder.blocks[3].attn.qkv.weight)


def test_evaluate_and_compare_commands(ft_run: Path, tiny_set: Path, tmp_path: Path):
    res = run_cli("evaluate", "--model", ft_run, "--data", tiny_set, "--split", "train", "--out", tmp_path / "ev")
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["split"] == "train" and m["n"] == 24
    res = run_cli("compare", ft_run, ft_run, "--out", tmp_path / "cmp", "--reps", 200)
    assert res.returncode == 0, res.stderr
    c = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert c["difference"] == 0 and (tmp_path / "cmp" / "compare.png").exists()
    assert_user_error(run_cli("compare", ft_run, tmp_path / "ev"), "different exams")
    # two recipes at two seeds each: b's second seed ranks every exam the other way round
    cases, p, y = read_predictions(ft_run / "predictions.csv")
    write_predictions(tmp_path / "flip" / "predictions.csv", cases, 1 - p, y)
    res = run_cli("compare", f"{ft_run},{ft_run}", f"{ft_run},{tmp_path / 'flip'}", "--out", tmp_path / "cmp2")
    assert res.returncode == 0, res.stderr
    c = json.loads((tmp_path / "cmp2" / "compare.json").read_text())
    auc = roc_auc_score(y, p)
    assert c["seeds"] == 2 and c["per_seed"] == pytest.approx([0, 2 * auc - 1])
    assert c["difference"] == pytest.approx(auc - 0.5) and "per seed" in res.stdout
    assert c["ci95"][0] <= c["ci95_exams"][0] and (tmp_path / "cmp2" / "compare.png").exists()
    assert_user_error(run_cli("compare", f"{ft_run},{ft_run}", ft_run), "2 runs of a and 1 of b")


def test_scratch_vit_and_cnn_baselines_run(tiny_set: Path, tmp_path: Path):
    for name, extra in (("vit", TINY_VIT), ("cnn", ["model.name=mrnet_cnn", "data.img_size=64"])):
        out = tmp_path / name
        finetune(load_config(None, ["finetune.ensemble=1", "train.epochs=1", "finetune.batch_exams=4",
                                    "trainer.accelerator=cpu", "finetune.aggregator=mean", *extra]), tiny_set, out)
        m = json.loads((out / "metrics.json").read_text())
        cases, probs, y = read_predictions(out / "predictions.csv")
        assert m["init"] == "scratch" and m["model"] == ("mrnet_cnn" if name == "cnn" else "vit_tiny")
        assert len(cases) == m["n"] == 12 and m["auc"] == pytest.approx(roc_auc_score(y, probs), abs=1e-6)
        assert ((probs > 0) & (probs < 1)).all() and np.ptp(probs) > 0  # exams scored, and told apart
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert len(log) == 1 and np.isfinite(log[0]["loss"])  # one epoch trained, to a finite loss


def test_config_stays_as_asked_and_the_preprocessing_record_travels(ft_run: Path, gmml_run: Path):
    from omegaconf import OmegaConf

    from sbssl.data.preprocessing import Preprocessing
    from sbssl.engine.inference import load_ensemble

    asked = OmegaConf.load(ft_run / "config.yaml")
    default = load_config(None)
    assert (asked.data.mean, asked.data.std) == (default.data.mean, default.data.std)  # nothing derived written
    assert str(asked.init) == str(gmml_run) and asked.data.root == default.data.root  # back into the config
    init = encoder_init(str(gmml_run))
    pre, path = init.preprocessing, init.path
    assert pre.mean > 0 and pre.std > 0  # the pretraining set's statistics, decided once
    rec = json.loads((ft_run / "run.json").read_text())
    assert Preprocessing.from_dict(rec["preprocessing"]) == pre and rec["init"] == f"gmml:{path}"
    ens = load_ensemble(ft_run)
    assert ens.pre == pre and ens.init == rec["init"]
    # the encoder's architecture is a record of its own (run.json), read back to rebuild; the config is as asked
    assert (asked.model.depth, asked.model.patch_size, asked.data.img_size) == (
        default.model.depth, default.model.patch_size, default.data.img_size) != (4, 8, 32)
    assert rec["architecture"]["model"] == {"name": "vit_tiny", "patch_size": 8, "in_chans": 1, "stem": "patch",
                                            "depth": 4}
    assert (ens.cfg.model.depth, ens.cfg.model.patch_size, ens.cfg.data.img_size) == (4, 8, 32)
    meta0 = safe_open_meta(ft_run / "model-0.safetensors")
    assert Preprocessing.from_dict(json.loads(meta0["preprocessing"])) == pre


def test_every_member_logs_its_steps_as_csv(ft_run: Path):
    from .test_pretrain import assert_logs_match

    records = [json.loads(line) for line in (ft_run / "log.jsonl").read_text().splitlines()]
    for seed in (0, 1):
        mine = [r for r in records if r["member"] == seed]
        assert len(mine) == 2  # FT: two epochs, no read-out first
        assert_logs_match(ft_run, f"member-{seed}", mine, tensorboard=False)
    assert not (ft_run / "logs" / "tensorboard").exists()  # csv alone by default


def safe_open_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()
