"""Run folders: refuse to clobber finished work, and one writer at a time (a lock file)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from sbssl.errors import SbsslError

# The files of a run folder (docs/design.md, "The run-folder contract"): one name each, used by every writer and
# reader.
CONFIG = "config.yaml"  # the config as the user asked for it
RUN = "run.json"  # what the run decided: dataset root, preprocessing record, the encoder it started from
LOG = "log.jsonl"  # one record per epoch
CHECKPOINTS = "checkpoints"  # resumable state (last.pt), per member for fine-tuning
ENCODER = "encoder.safetensors"  # a pretraining's product and finished marker
SPLIT = "split.json"  # fine-tuning's fit / held-out train exams
METRICS = "metrics.json"  # an evaluation's summary and finished marker
PREDICTIONS = "predictions.csv"  # case,probability,label
MEMBER_PREDICTIONS = "predictions_members.csv"  # one column per ensemble member (or fused plane)
ROC = "roc.png"
COMPARE, COMPARE_PLOT = "compare.json", "compare.png"
FUSION = "fusion.json"  # a plane fusion's weights


def model_file(seed: int) -> str:
    return f"model-{seed}.safetensors"


def run_root(run: Path) -> str:
    """The dataset a run was trained on: its run.json (config.yaml's data.root for runs written before it)."""
    import json

    try:
        return str(json.loads((Path(run) / RUN).read_text()).get("root", ""))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        from omegaconf import OmegaConf

        return str(OmegaConf.load(Path(run) / CONFIG).get("data", {}).get("root", "") or "")
    except Exception:  # a missing or damaged config: no root known
        return ""



def prepare_out(out: Path, overwrite: bool, marker: str) -> None:
    """Create `out`; refuse when it holds a finished run (its `marker` file) unless overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SbsslError(f"{out}: exists and is not a folder")
    if (out / marker).exists():
        if not overwrite:
            raise SbsslError(f"{out}: holds a finished run ({marker}); pass --overwrite to replace it")
        _empty(out)
    out.mkdir(parents=True, exist_ok=True)


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


class RunLock:
    """An exclusive lock file in the run folder, so two runs never write one folder."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SbsslError(f"{self.path.parent}: another sbssl run is writing this folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete the temp files (`.NAME.*.tmp`) that a killed run's atomic writes left behind."""
    stale = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        logging.getLogger("sbssl").info("%s: removed %d half-written file(s) of an interrupted run", folder, len(stale))
    return stale


def prepare_run(out: Path, overwrite: bool, resume: bool, finished_marker: str, extendable: bool = False) -> bool:
    """Ready a training run folder; returns True when a run is there to resume.

    A finished run is refused without --overwrite; an unfinished one (a checkpoint but no
    `finished_marker`) is resumed automatically unless --overwrite starts afresh. With `extendable`,
    --resume also continues a finished run from its checkpoint (to a longer schedule: MAE's --resume).
    """
    out = Path(out)
    has_ckpt = (out / "checkpoints" / "last.pt").exists() or (out / "checkpoints" / "prev.pt").exists()
    if overwrite and out.exists():
        _empty(out)
        return False
    if extendable and resume and has_ckpt and (out / finished_marker).exists():
        return True
    prepare_out(out, False, marker=finished_marker)
    if resume and not has_ckpt:
        logging.getLogger("sbssl").info("%s: no checkpoint to resume; starting afresh", out)
    return has_ckpt
