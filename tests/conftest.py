"""Shared fixtures: a tiny synthetic MRNet-layout set, generated once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

from sbssl.synth import SynthSpec, generate  # noqa: E402

TINY = SynthSpec(train=24, valid=12, size=64, seed=3, difficulty=0.3, workers=2)


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "MRNet-v1.0"
    generate(root, TINY)
    return root


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `sbssl ARGS` in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "sbssl.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def assert_user_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one line naming the fault, and no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error:"), err
    for n in needles:
        assert n in last, (n, last)
