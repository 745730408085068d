"""Checkpoints: atomic writes, the previous good one kept, loading without unpickling code.

`last.pt` holds model, optimiser, epoch, step and RNG states; it is written to a temp
file and renamed, and the one it replaces is kept as `prev.pt`, so a crash, a full disk
or a corrupted file never costs more than one epoch. `torch.load(weights_only=True)`
refuses any pickled object other than tensors and plain containers.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from sbssl.errors import SbsslError
from sbssl.utils.io import atomic_write

log = logging.getLogger("sbssl")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, state: dict) -> Path:
    """Write folder/last.pt atomically; the previous last.pt becomes prev.pt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    last, prev = folder / "last.pt", folder / "prev.pt"
    try:
        if last.exists():
            tmp_prev = folder / ".prev.pt.tmp"
            shutil.copyfile(last, tmp_prev)  # copy, so last.pt stays valid until the new one lands
            os.replace(tmp_prev, prev)
        atomic_write(last, lambda p: torch.save(state, p))
    except OSError as e:
        raise SbsslError(f"{last}: checkpoint write failed ({e.strerror or e}); "
                         f"the previous checkpoint is intact") from None
    return last


def _load(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError("not an sbssl checkpoint")
    return state


def load_checkpoint(folder: Path) -> dict | None:
    """The newest readable checkpoint in folder (last.pt, else prev.pt), or None if there is none."""
    folder = Path(folder)
    for name in ("last.pt", "prev.pt"):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = _load(path)
        except Exception as e:  # truncated, corrupted, or carrying a pickle payload
            log.warning("%s: unreadable checkpoint (%s); trying the previous one", path,
                        str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
            continue
        if name == "prev.pt":
            log.warning("resuming from %s (epoch %d)", path, state["epoch"])
        return state
    if any((folder / n).exists() for n in ("last.pt", "prev.pt")):
        raise SbsslError(f"{folder}: no readable checkpoint (last.pt and prev.pt are damaged); "
                         f"start afresh with --overwrite")
    return None


def restore_into(state: dict, model, trainer) -> int:
    """A checkpoint's model, optimiser, RNG and step into a run (`trainer`: engine.loop.Trainer); the epoch to
    start at. Both stages resume this way, so a resumed run replays the uninterrupted one."""
    model.load_state_dict(state["model"])
    trainer.opt_f.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    trainer.step = state["step"]
    return state["epoch"] + 1
