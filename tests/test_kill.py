"""kill -9 at random points of pretraining and fine-tuning, and a DDP process lost mid-run.

Each interrupted run is resumed by rerunning the same command and must end with exactly
the weights and log of an uninterrupted run (deterministic settings). The kill points are
drawn from SBSSL_FAULT_SEED (default 0) and printed, so a failure can be replayed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sbssl.engine import checkpoint as ckpt

from .conftest import FT, TINY_VIT, run_cli, start_cli

pytestmark = pytest.mark.slow
CRASH = Path(__file__).with_name("crash_run.py")
SEED = int(os.environ.get("SBSSL_FAULT_SEED", "0"))


def _cmd(args: list) -> list[str]:
    return [sys.executable, str(CRASH), *map(str, args)]


def _run(args: list, kill: str | None = None) -> subprocess.CompletedProcess:
    """`sbssl ARGS` in its own process (forked from the warm one), killed at `kill` (tests/crash_run.py)."""
    return run_cli(*args, env={"SBSSL_KILL": kill or ""})


def _log(out: Path) -> list[dict]:
    path = out / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _alive(pid: int) -> bool:
    """Until warm_cli.py reaps it (within 10 ms of its end): a run that ends early reports its own exit code."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_after_progress(args: list, out: Path, delay: float) -> int:
    """Start the run, wait for its first logged epoch, then `kill -9` it `delay` seconds later."""
    run = start_cli(*args, env={"SBSSL_KILL": ""})
    t0 = time.monotonic()
    while not _log(out) and _alive(run.pid) and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        os.kill(run.pid, signal.SIGKILL)
    return run.wait().returncode


def _same_files(a: Path, b: Path) -> None:
    sa, sb = load_file(a), load_file(b)
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not (sa[k] == sb[k]).all()]
    assert not diff, f"{b.name}: {len(diff)} tensors differ from the uninterrupted run, e.g. {diff[:3]}"


def _interrupt(args: list, out: Path, epoch_s: float, steps: int, rng: random.Random) -> list[str]:
    """Three kills: external at a random time, during a checkpoint write, at a random step (`steps`: one epoch's
    optimiser steps); then the run is finished."""
    points = []
    delay = rng.uniform(0.0, epoch_s)
    points.append(f"kill -9 {delay:.2f}s after the first logged epoch")
    assert _kill_after_progress(args, out, delay) == -signal.SIGKILL, points
    points.append("kill -9 during the next checkpoint write")
    res = _run(args, kill="save:1")
    assert res.returncode == -signal.SIGKILL, (points, res.stderr[-2000:])
    half = list(out.rglob(".last.pt.*.tmp"))
    assert half, "the checkpoint write was not in progress"
    assert ckpt.load_checkpoint(half[0].parent) is not None  # the previous checkpoint is intact
    k = rng.randint(1, steps)  # within one epoch, so it lands before the run could finish
    points.append(f"kill -9 at step {k} of the resumed process")
    res = _run(args, kill=f"step:{k}")
    assert res.returncode == -signal.SIGKILL, (points, res.stderr[-2000:])
    res = _run(args)
    assert res.returncode == 0, (points, res.stderr[-2000:])
    assert not list(out.rglob("*.tmp")), "half-written files were left behind"
    return points


def test_kill9_pretraining_resumes_to_the_uninterrupted_weights(tiny_set: Path, tmp_path: Path):
    args = [*TINY_VIT, "train.epochs=3", "train.batch_size=64", "train.deterministic=true", "train.recon_every=0",
            "trainer.precision=32-true", f"data.cache_dir={tmp_path / 'cache'}"]
    t0 = time.monotonic()
    ref = _run(["pretrain", "--data", tiny_set, "--out", tmp_path / "ref", *args])
    assert ref.returncode == 0, ref.stderr
    log = _log(tmp_path / "ref")
    epoch_s = min(r["seconds"] for r in log)
    out = tmp_path / "killed"
    points = _interrupt(["pretrain", "--data", tiny_set, "--out", out, *args], out, epoch_s, log[0]["step"],
                        random.Random(SEED))
    print(f"seed {SEED}: {points}; {time.monotonic() - t0:.1f}s in all")
    assert [r["epoch"] for r in _log(out)] == list(range(3)), "each epoch logged exactly once"
    assert [r["loss"] for r in _log(out)] == [r["loss"] for r in log]
    _same_files(tmp_path / "ref" / "encoder.safetensors", out / "encoder.safetensors")


def test_kill9_finetuning_resumes_to_the_uninterrupted_ensemble(tiny_set: Path, gmml_run: Path, tmp_path: Path):
    args = [*FT, f"init={gmml_run}", "train.deterministic=true", "trainer.accelerator=cpu",
            "trainer.precision=32-true", f"data.cache_dir={tmp_path / 'cache'}"]
    t0 = time.monotonic()
    ref = _run(["finetune", "--data", tiny_set, "--out", tmp_path / "ref", *args])
    assert ref.returncode == 0, ref.stderr
    log = _log(tmp_path / "ref")
    epoch_s = (time.monotonic() - t0) / len(log)
    out = tmp_path / "killed"
    points = _interrupt(["finetune", "--data", tiny_set, "--out", out, *args], out, epoch_s, log[0]["step"],
                        random.Random(SEED + 1))
    print(f"seed {SEED}: {points}")
    assert [(r["member"], r["epoch"]) for r in _log(out)] == [(r["member"], r["epoch"]) for r in log]
    for seed in (0, 1):
        _same_files(tmp_path / "ref" / f"model-{seed}.safetensors", out / f"model-{seed}.safetensors")
    assert (out / "predictions.csv").read_text() == (tmp_path / "ref" / "predictions.csv").read_text()


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def ddp_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp_cache")


@pytest.mark.parametrize("victim", ["worker", "launcher"])
def test_ddp_peer_killed_ends_the_other_cleanly(victim: str, tiny_set: Path, tmp_path: Path, ddp_cache: Path):
    out = tmp_path / "ddp"
    args = ["pretrain", "--data", tiny_set, "--out", out, *TINY_VIT, "train.epochs=200", "train.batch_size=32",
            "trainer.devices=2", "trainer.strategy=ddp", "trainer.precision=32-true", "train.recon_every=0",
            f"data.cache_dir={ddp_cache}"]
    env = {**os.environ, "SBSSL_KILL": "", "MASTER_PORT": str(20000 + (os.getpid() * 7 + len(victim)) % 20000)}
    p = subprocess.Popen(_cmd(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.monotonic()
    while not (out / "checkpoints" / "last.pt").exists() and p.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.1)
    assert p.poll() is None, p.stderr.read()[-2000:]
    (worker,) = _children(p.pid)
    os.kill(worker if victim == "worker" else p.pid, signal.SIGKILL)
    t1 = time.monotonic()
    try:
        err = p.communicate(timeout=120)[1]  # EOF on stderr: every process of the job has exited
    except subprocess.TimeoutExpired:
        p.kill()
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the surviving DDP process hung after its peer was killed")
    print(f"first checkpoint after {t1 - t0:.1f}s; the job ended {time.monotonic() - t1:.1f}s after the kill")
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "lost another DDP process" in lines[0], err[-3000:]
    if victim == "worker":
        assert p.returncode == 2 and "rank 0" in lines[0]
    else:
        assert p.returncode == -signal.SIGKILL and "rank 1" in lines[0]
        while _alive(worker) and time.monotonic() - t1 < 150:
            time.sleep(0.1)
        assert not _alive(worker)
    assert ckpt.load_checkpoint(out / "checkpoints") is not None  # the finished epochs are kept


def test_a_peer_that_never_joins_ends_the_rendezvous_in_the_configured_time(tiny_set: Path, tmp_path: Path):
    """Rank 0 of two, started as torchrun would start it, whose rank 1 never comes: one line, exit 2, within the
    configured timeout (torch's default would hold it 30 minutes)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": "t"}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "sbssl.cli", "pretrain", "--data", str(tiny_set), "--out",
                          str(tmp_path / "run"), *TINY_VIT, "trainer.devices=2", "trainer.strategy=ddp",
                          "trainer.rendezvous_timeout_s=3"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "not all 2 processes joined within 3 s" in res.stderr
    assert time.monotonic() - t0 < 60
