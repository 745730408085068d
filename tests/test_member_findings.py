"""benchmarks/member_findings.py: each member's AUC within a knob's values and its rho with recorded findings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "member_findings.py"


def _fake_run(tmp_path: Path) -> tuple[Path, Path]:
    """A member that reads the tear only in PD (a perfect ranking there, the reverse in fat-sat), another whose
    score is the effusion; the ensemble is their mean, as a run's predictions.csv holds."""
    rng = np.random.default_rng(0)
    n = 40
    y = np.array([0, 1] * (n // 2))
    seq = np.where(np.arange(n) < n // 2, "pd", "pdfs")
    effusion = rng.uniform(0, 10, n)
    m0 = np.where(seq == "pd", y + rng.uniform(0, 0.5, n), 1 - y + rng.uniform(0, 0.5, n)) / 1.5
    m1 = effusion / 10
    root, run = tmp_path / "data", tmp_path / "run"
    (root / "findings").mkdir(parents=True)
    run.mkdir()
    cases = [f"{i:04d}" for i in range(n)]
    (root / "findings" / "valid.csv").write_text("case,acl_tear,sag_sequence,effusion_mm\n" + "".join(
        f"{c},{'complete' if t else 'none'},{s},{e}\n" for c, t, s, e in zip(cases, y, seq, effusion, strict=True)))
    (run / "predictions.csv").write_text("case,probability,label\n" + "".join(
        f"{c},{(a + b) / 2},{t}\n" for c, a, b, t in zip(cases, m0, m1, y, strict=True)))
    (run / "predictions_members.csv").write_text("case,member_0,member_1\n" + "".join(
        f"{c},{a},{b}\n" for c, a, b in zip(cases, m0, m1, strict=True)))
    return root, run


def test_member_auc_within_each_sequence_and_rho_with_findings(tmp_path: Path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from member_findings import read_findings, read_out
    finally:
        sys.path.remove(str(SCRIPT.parent))
    root, run = _fake_run(tmp_path)
    rows = read_out(run, read_findings(root), "sag_sequence", ["effusion_mm", "acl_tear"])
    assert set(rows) == {"member_0", "member_1", "ensemble"}
    m0, m1 = rows["member_0"], rows["member_1"]
    assert m0["auc_sag_sequence=pd"] == 1.0 and m0["auc_sag_sequence=pdfs"] == 0.0  # the split shows it
    assert 0.3 < m0["auc"] < 0.7  # overall it looks like chance
    assert m1["rho_effusion_mm"] == pytest.approx(1.0)  # the score is the effusion
    for m in (m0, m1):  # a finding stored as text ('none' or a tear type) counts as present / absent
        assert np.sign(m["rho_acl_tear"]) == np.sign(m["auc"] - 0.5)


def test_member_findings_cli_prints_the_members_summary(tmp_path: Path):
    root, run = _fake_run(tmp_path)
    res = subprocess.run([sys.executable, str(SCRIPT), "--data", str(root), str(run), "--findings", "effusion_mm",
                          "--no-record"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "2 members, median (range): auc" in res.stdout
    assert re.search(r"auc_sag_sequence=pd [01]\.\d\d \([01]\.\d\d-1\.00\)", res.stdout)  # member_0's 1.0 in PD
    assert re.search(r"auc_sag_sequence=pdfs [01]\.\d\d \(0\.00-", res.stdout)  # and its 0.0 in fat-sat
