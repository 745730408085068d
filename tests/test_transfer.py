"""benchmarks/transfer.py: the shipped recipes, every arm, on a family generated for it, with paired differences."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sbssl.evaluation.report_files import read_predictions
from sbssl.weights import builtin_path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer.py"


@pytest.mark.slow
def test_transfer_runs_every_arm_at_every_seed_on_a_generated_family_and_pairs_them(tmp_path: Path):
    small = ["train.epochs=1", "train.warmup_epochs=0", "finetune.ensemble=1", "finetune.slices=4",
             "finetune.probe_steps=5", "finetune.select=last", "trainer.accelerator=cpu"]
    res = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path), "--families", "mixed",
                          "--train", "10", "--valid", "8", "--size", "48", "--set", *small, "data.roi=knee",
                          "--pretrain", "train.batch_size=16", "train.recon_every=0",
                          "--encoder", f"again={builtin_path('cpu')}",  # the shipped file as a candidate
                          "--variant", "slow", "train.lr=1e-6", "--variant", "slowcnn:cnn", "train.lr=1e-6",
                          "--seeds", "0,1",
                          "--out-json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "r.json").read_text())["targets"]["mixed"]
    synth = json.loads((tmp_path / "data-mixed-48" / "MRNet-v1.0" / "findings" / "synth.json").read_text())
    assert synth["spec"]["family"] == "mixed" and synth["spec"]["seed"] == 5
    assert (tmp_path / "mixed" / "pretrain-own" / "encoder.safetensors").is_file()
    own = json.loads((tmp_path / "mixed" / "pretrain-own" / "run.json").read_text())["preprocessing"]
    region = OmegaConf.load(tmp_path / "mixed" / "finetune-gmml" / "config.yaml").data
    assert (own["roi"], own["crop"], own["slab"]) == ("knee", region.crop, region.slab)  # the classifier's region
    for arm in ("gmml", "scratch", "cnn", "own", "again", "slow", "slowcnn"):
        for seed, name in enumerate((f"finetune-{arm}", f"finetune-{arm}-seed1")):  # seed 0 keeps the old name
            run = tmp_path / "mixed" / name
            cases, _, _ = read_predictions(run / "predictions.csv")
            member = json.loads((run / "metrics.json").read_text())["member_metrics"][0]
            assert len(cases) == 8 and member["seed"] == seed
            info = json.loads((run / "run.json").read_text())
            assert info["preprocessing"]["roi"] == "knee"  # --set reached it
            assert arm != "own" or "pretrain-own" in info["init"]  # one own pretraining for all seeds
            if arm == "again":  # judged as shipped: the shipped file, rounded again, scores as the shipped arm
                assert "candidates" in info["init"]
                gmml = read_predictions(tmp_path / "mixed" / name.replace("again", "gmml") / "predictions.csv")
                assert np.array_equal(read_predictions(run / "predictions.csv")[1], gmml[1])
            asked = OmegaConf.load(run / "config.yaml")
            assert (asked.train.lr == 1e-6) == arm.startswith("slow") and (arm != "slow" or "gmml" in info["init"])
            assert (asked.model.name == "mrnet_cnn") == arm.endswith("cnn")  # a variant of the CNN arm is a CNN
        assert out[arm]["auc"] == pytest.approx(np.mean(out[arm]["auc_per_seed"]))
    for pair in ("gmml-scratch", "own-scratch", "gmml-cnn", "own-cnn", "own-gmml", "again-scratch", "again-cnn",
                 "again-gmml", "slow-gmml", "slow-scratch", "slowcnn-cnn", "slowcnn-slow"):
        a, b = pair.split("-")
        per_seed = np.subtract(out[a]["auc_per_seed"], out[b]["auc_per_seed"])
        assert out[pair]["per_seed"] == pytest.approx(per_seed, abs=1e-9)
        assert out[pair]["diff"] == pytest.approx(out[a]["auc"] - out[b]["auc"], abs=1e-9)
        assert -1 <= out[pair]["ci95"][0] <= out[pair]["ci95"][1] <= 1
        assert -1 <= out[pair]["ci95_exams"][0] <= out[pair]["ci95_exams"][1] <= 1
    assert "mixed: gmml" in res.stdout and "(seeds " in res.stdout


def test_a_missing_candidate_encoder_is_one_line_before_any_work(tmp_path: Path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "w"), "--families", "mixed",
                          "--encoder", f"cand={tmp_path / 'nope.safetensors'}"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "nope.safetensors: no such encoder file" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()  # nothing generated, nothing written
