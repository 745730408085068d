"""Shared fixtures: a tiny synthetic MRNet-layout set, generated once per session."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

from sbssl.config import load_config  # noqa: E402
from sbssl.synth import SynthSpec, generate  # noqa: E402

TINY = SynthSpec(train=24, valid=12, size=64, seed=3, difficulty=0.3, workers=2)
# four blocks of ViT-T's width: a third of the compute; the engine, files and CLI are what the tests exercise
TINY_VIT = ["model.name=vit_tiny", "model.depth=4", "data.img_size=32", "model.patch_size=8", "trainer.accelerator=cpu"]
# select=auc: the tiny set's held-out fifth holds one positive, too few for `auto` to choose on (it would fit on
# every exam: test_finetune.py's test of the selection rule); these runs test the held-out machinery.
FT = ["finetune.ensemble=2", "train.epochs=2", "finetune.slices=4", "finetune.batch_exams=4", "train.lr=5e-3",
      "train.warmup_epochs=0", "finetune.select=auc"]


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "MRNet-v1.0"
    generate(root, TINY)
    return root


@pytest.fixture(scope="session")
def gmml_run(tiny_set: Path, tmp_path_factory) -> Path:
    """A tiny finished GMML pretraining run."""
    from sbssl.engine.pretrain import pretrain

    out = tmp_path_factory.mktemp("pre") / "run"
    pretrain(load_config(None, TINY_VIT + ["train.epochs=1", "train.batch_size=32", "train.recon_every=0"]),
             tiny_set, out)
    return out


@pytest.fixture(scope="session")
def gmml_roi_run(tiny_set: Path, tmp_path_factory) -> Path:
    """A tiny GMML run on a region of interest, with the convolutional stem."""
    from sbssl.engine.pretrain import pretrain

    out = tmp_path_factory.mktemp("pre_roi") / "run"
    over = ["model.name=vit_tiny", "model.depth=4", "data.img_size=16", "model.patch_size=4", "model.stem=conv",
            "data.crop=0.5", "data.slab=0.6", "trainer.accelerator=cpu", "train.epochs=1", "train.batch_size=32",
            "train.recon_every=0", "mask.align=4"]
    pretrain(load_config(None, over), tiny_set, out)
    return out


@pytest.fixture(scope="session")
def ft_run(tiny_set: Path, gmml_run: Path, tmp_path_factory) -> Path:
    """A tiny finished 2-member fine-tuning run from the GMML encoder."""
    from sbssl.workflow import finetune

    out = tmp_path_factory.mktemp("ft") / "gmml"
    finetune(load_config(None, FT + [f"init={gmml_run}"]), tiny_set, out)
    return out


class WarmRun:
    """One CLI run forked from tests/warm_cli.py: its pid (to signal, as a test would a Popen) and its result."""

    def __init__(self, server: subprocess.Popen, argv: list[str], outdir: tempfile.TemporaryDirectory, timeout: int):
        self.server, self.argv, self.outdir, self.timeout = server, argv, outdir, timeout
        self.pid, self.result = int(self._reply()["pid"]), None

    def _reply(self) -> dict:
        line = self.server.stdout.readline()
        assert line, f"tests/warm_cli.py ended (exit {self.server.wait()})"
        return json.loads(line)

    def wait(self) -> subprocess.CompletedProcess:
        """The run's exit code (minus the signal that ended it), stdout and stderr, as subprocess.run gives them."""
        if self.result is None:
            reply, d = self._reply(), self.outdir.name
            out, err = Path(d, "stdout").read_text(), Path(d, "stderr").read_text()
            self.outdir.cleanup()
            self.result = (subprocess.TimeoutExpired(self.argv, self.timeout, out, err) if reply["timed_out"] else
                           subprocess.CompletedProcess(self.argv, reply["rc"], out, err))
        if isinstance(self.result, subprocess.TimeoutExpired):
            raise self.result
        return self.result


class _WarmCli:
    """tests/warm_cli.py, started on the first CLI run of the session: each run a child forked from it."""

    proc: subprocess.Popen | None = None
    last: WarmRun | None = None

    @classmethod
    def start(cls, argv: list[str], cwd: Path | None, env: dict[str, str], timeout: int) -> WarmRun:
        if cls.last is not None:  # a test that failed before waiting: its reply comes first
            with contextlib.suppress(subprocess.TimeoutExpired, AssertionError):
                cls.last.wait()
        if cls.proc is None or cls.proc.poll() is not None:
            cls.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("warm_cli.py"))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            atexit.register(cls.proc.kill)
        d = tempfile.TemporaryDirectory()
        req = {"argv": argv, "cwd": str(cwd) if cwd else None, "env": env, "timeout": timeout,
               "stdout": f"{d.name}/stdout", "stderr": f"{d.name}/stderr"}
        cls.proc.stdin.write(json.dumps(req) + "\n")
        cls.proc.stdin.flush()
        cls.last = WarmRun(cls.proc, argv, d, timeout)
        return cls.last


def start_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600
              ) -> WarmRun:
    """Start `sbssl ARGS` in its own process forked from a warm one that has imported torch and the rest
    (tests/warm_cli.py), with os.environ updated by `env`; `.wait()` for its result. One run at a time."""
    return _WarmCli.start([*map(str, args)], cwd, {**os.environ, **(env or {})}, timeout)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600,
            fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `sbssl ARGS` as a user would, in its own process (`start_cli`), or with `fresh` a new interpreter (a
    DDP launcher re-executes itself)."""
    if not fresh:
        return start_cli(*args, cwd=cwd, env=env, timeout=timeout).wait()
    return subprocess.run([sys.executable, "-m", "sbssl.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


def assert_user_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one line naming the fault, and no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error:"), err
    for n in needles:
        assert n in last, (n, last)
