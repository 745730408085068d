"""Faults: damaged checkpoints, failing writes, non-finite losses, concurrent runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sbssl.config import load_config
from sbssl.engine import checkpoint as ckpt
from sbssl.errors import SbsslError
from sbssl.utils.rundir import RunLock

from .conftest import TINY_VIT


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((3,), v)}, "epoch": int(v), "step": 1}


def test_corrupted_last_falls_back_to_prev(tmp_path: Path, caplog):
    ckpt.save_checkpoint(tmp_path, _state(1))
    ckpt.save_checkpoint(tmp_path, _state(2))
    assert ckpt.load_checkpoint(tmp_path)["epoch"] == 2
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:50])  # truncated
    assert ckpt.load_checkpoint(tmp_path)["epoch"] == 1
    assert "unreadable checkpoint" in caplog.text
    (tmp_path / "prev.pt").write_bytes(b"garbage")
    with pytest.raises(SbsslError, match="no readable checkpoint"):
        ckpt.load_checkpoint(tmp_path)


def test_pickle_payload_in_checkpoint_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": Evil(), "epoch": 0}, tmp_path / "last.pt")
    with pytest.raises(SbsslError):
        ckpt.load_checkpoint(tmp_path)
    assert not marker.exists()


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, _state(1))

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SbsslError, match="No space left"):
        ckpt.save_checkpoint(tmp_path, _state(2))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path)["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_nonfinite_loss_stops_before_any_update(tiny_set: Path, tmp_path: Path, monkeypatch):
    from sbssl.engine import pretrain as pre
    from sbssl.engine import tasks

    monkeypatch.setattr(tasks, "masked_l1", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(SbsslError, match="non-finite loss at epoch 0 step 0"):
        pre.pretrain(load_config(None, TINY_VIT + ["train.epochs=1", "train.batch_size=32"]), tiny_set,
                     tmp_path / "r")
    assert not (tmp_path / "r" / "encoder.safetensors").exists()
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()


def test_two_runs_cannot_share_a_folder(tmp_path: Path):
    with RunLock(tmp_path), pytest.raises(SbsslError, match="another sbssl run"), RunLock(tmp_path):
        pass


def test_nonfinite_step_is_skipped_when_configured(tiny_set: Path, tmp_path: Path, monkeypatch, caplog):
    from safetensors.torch import load_file

    from sbssl.engine import pretrain as pre
    from sbssl.engine import tasks

    real, calls = tasks.masked_l1, []

    def nan_once(*a):
        calls.append(1)
        loss = real(*a)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(tasks, "masked_l1", nan_once)
    pre.pretrain(load_config(None, TINY_VIT + ["train.epochs=1", "train.batch_size=64", "train.recon_every=0",
                                              "train.nonfinite=skip"]), tiny_set, tmp_path / "r")
    assert "non-finite loss at epoch 0 step 1: step skipped" in caplog.text
    sd = load_file(tmp_path / "r" / "encoder.safetensors")
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_resume_bookkeeping(tmp_path: Path):
    """A killed run's torn log line and half-written temp files are cleaned before it resumes."""
    from sbssl.utils.io import trim_jsonl
    from sbssl.utils.rundir import remove_stale_tmp

    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n{"epo')
    trim_jsonl(log, lambda r: r["epoch"] <= 1)
    assert log.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half")
    keep = tmp_path / "checkpoints" / "last.pt"
    keep.write_bytes(b"x")
    assert remove_stale_tmp(tmp_path) == [stale]
    assert keep.exists() and not stale.exists()
