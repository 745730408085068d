"""Every plane and task trains; `sbssl fuse` fits MRNet's logistic regression on held-out train exams only."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sbssl.config import load_config
from sbssl.data.layout import PLANES
from sbssl.evaluation.fusion import ensemble_probs, fused_probability

from .conftest import FT, TINY_VIT, assert_user_error, run_cli


def probabilities(path: Path) -> dict[str, float]:
    return {r["case"]: float(r["probability"]) for r in csv.DictReader(path.open())}


@pytest.fixture(scope="module")
def plane_runs(tiny_set: Path, tmp_path_factory) -> dict[str, Path]:
    """One tiny meniscus run per plane, from scratch, with the same seed and held-out fraction."""
    from sbssl.workflow import finetune

    root = tmp_path_factory.mktemp("planes")
    runs = {}
    for plane in PLANES:
        over = [*TINY_VIT, *FT, "finetune.ensemble=1", "train.epochs=1", "init=scratch", "data.task=meniscus",
                f"data.plane={plane}"]
        runs[plane] = finetune(load_config(None, over), tiny_set, root / plane)
    return runs


def test_every_plane_trains_and_scores_its_own_slices(plane_runs: dict[str, Path]):
    for plane, run in plane_runs.items():
        m = json.loads((run / "metrics.json").read_text())
        assert (m["plane"], m["task"], m["split"]) == (plane, "meniscus", "valid")
        assert 0.0 <= m["auc"] <= 1.0
    # the planes are different inputs, so the models disagree somewhere
    p = [np.array([float(r["probability"]) for r in csv.DictReader((run / "predictions.csv").open())])
         for run in plane_runs.values()]
    assert not np.allclose(p[0], p[1]) and not np.allclose(p[1], p[2])


def test_fuse_fits_on_held_out_train_and_scores_valid(plane_runs: dict[str, Path], tiny_set: Path, tmp_path: Path):
    runs = [plane_runs[p] for p in PLANES]
    res = run_cli("fuse", *runs, "--out", tmp_path / "fused")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "fused"
    for f in ("metrics.json", "predictions.csv", "predictions_members.csv", "roc.png", "fusion.json"):
        assert (out / f).is_file(), f
    fusion = json.loads((out / "fusion.json").read_text())
    held = json.loads((runs[0] / "split.json").read_text())["held_out"]
    assert fusion["planes"] == list(PLANES) and len(fusion["weights"]) == 3
    assert fusion["fitted_on"]["n"] == len(held)  # fitted on the held-out train exams ...
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "valid" and m["n"] == 12 and len(m["auc_ci95"]) == 2  # ... scored on valid
    assert [x["plane"] for x in m["member_metrics"]] == list(PLANES)
    members = list(csv.DictReader((out / "predictions_members.csv").open()))
    fused = probabilities(out / "predictions.csv")
    plane_p = {pl: np.array([float(r[pl]) for r in members]) for pl in PLANES}
    want = fused_probability(fusion, plane_p)
    np.testing.assert_allclose([fused[r["case"]] for r in members], want, atol=2e-6)
    # the plane columns are each plane run's own valid probabilities
    own = probabilities(plane_runs["coronal"] / "predictions.csv")
    np.testing.assert_allclose([own[r["case"]] for r in members], plane_p["coronal"], atol=2e-6)
    # refitting by hand on the held-out probabilities gives the same weights
    from sklearn.linear_model import LogisticRegression

    cols = [ensemble_probs(r, tiny_set, "train", held) for r in runs]
    lr = LogisticRegression(C=1.0).fit(np.stack([c[2] for c in cols], 1), cols[0][1])
    np.testing.assert_allclose(lr.coef_[0], fusion["weights"], atol=1e-6)
    assert_user_error(run_cli("fuse", *runs, "--out", out), "finished run")


def test_fuse_refuses_runs_that_cannot_be_fused(plane_runs: dict[str, Path], tmp_path: Path):
    sag, cor = plane_runs["sagittal"], plane_runs["coronal"]
    assert_user_error(run_cli("fuse", sag, sag, "--out", tmp_path / "a"), "same plane")
    other = tmp_path / "acl_run"
    shutil.copytree(cor, other)
    cfg = (other / "config.yaml").read_text().replace("task: meniscus", "task: acl")
    (other / "config.yaml").write_text(cfg)
    assert_user_error(run_cli("fuse", sag, other, "--out", tmp_path / "b"), "different tasks")
    shifted = tmp_path / "shifted"
    shutil.copytree(cor, shifted)
    split = json.loads((shifted / "split.json").read_text())
    split["held_out"], split["fit"] = split["fit"][:5], split["fit"][5:] + split["held_out"]
    (shifted / "split.json").write_text(json.dumps(split))
    assert_user_error(run_cli("fuse", sag, shifted, "--out", tmp_path / "c"), "held out other train exams")
    read_outs = []  # read-out-only runs (train.epochs=0) fit on every labelled exam: nothing left to fuse on
    for run in (sag, cor):
        read_outs.append(tmp_path / f"all-{run.name}")
        shutil.copytree(run, read_outs[-1])
        split = json.loads((read_outs[-1] / "split.json").read_text())
        split["fit"], split["held_out"] = split["fit"] + split["held_out"], []
        (read_outs[-1] / "split.json").write_text(json.dumps(split))
    assert_user_error(run_cli("fuse", *read_outs, "--out", tmp_path / "e"), "held out no train exams")
    assert_user_error(run_cli("fuse", sag, "--out", tmp_path / "d"), "at least two")


def test_predict_with_a_fused_model_takes_the_three_series(plane_runs: dict[str, Path], tiny_set: Path,
                                                           tmp_path: Path):
    from sbssl.evaluation.fusion import fuse

    fuse([plane_runs[p] for p in PLANES], tmp_path / "fused")  # the call behind `sbssl fuse` (its CLI: above)
    inp = tmp_path / "exams"
    for plane in PLANES:
        (inp / plane).mkdir(parents=True)
        for case in ("0024", "0025", "0026"):
            if not (case == "0026" and plane == "axial"):  # one exam lacks its axial series
                shutil.copy(tiny_set / "valid" / plane / f"{case}.npy", inp / plane / f"{case}.npy")
    res = run_cli("predict", "--model", tmp_path / "fused", inp, "--out", tmp_path / "pred")
    assert res.returncode == 2 and "0026 has no axial series" in res.stderr and "Traceback" not in res.stderr
    got = probabilities(tmp_path / "pred" / "predictions.csv")
    want = probabilities(tmp_path / "fused" / "predictions.csv")
    assert set(got) == {"0024", "0025"}
    for case, p in got.items():  # the same exam through predict and through fuse's scoring
        assert abs(p - want[case]) < 0.02, (case, p, want[case])
    assert (tmp_path / "pred" / "predictions_planes.csv").is_file()
