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
        np.testing.assert_allclose(bench.oracle.acl_index(spec, "train", case, labels[case]),
                                   bench.coverage.acl_index(exam), atol=1e-6)
        at = bench.oracle.acl_index(spec, "train", case, labels[case])
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
