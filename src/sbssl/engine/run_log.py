"""The one writer of a run's training log: `log.jsonl` (one record per epoch: what the report and the tests read)
and Lightning Fabric's loggers (`trainer.loggers`: `csv` by default, `tensorboard` with the optional extra) with
every optimiser step's loss, learning rate and weight decay and every epoch's metrics.

Each stream (the pretraining, or one ensemble member) is one logger version under `logs/`: a CSV at
`logs/csv/NAME/metrics.csv`, TensorBoard event files under `logs/tensorboard/NAME/`. Resuming drops what was
logged after the checkpoint from all of them (JSONL and CSV trimmed, TensorBoard purged from the step on), so
every step appears once.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from sbssl.registry import LOGGERS
from sbssl.utils.io import trim_jsonl
from sbssl.utils.rundir import LOG

LOGS = "logs"


class RunLog:
    """Where one stream of a run logs (rank 0 only: `enabled=False` makes every call a no-op)."""

    def __init__(self, out: Path, name: str, loggers: Iterable[str] = ("csv",), enabled: bool = True,
                 resumed_at: int | None = None):
        """`resumed_at`: the optimiser step of the checkpoint a resumed stream restarts from (what was logged
        after it goes)."""
        self.out, self.name, self.enabled = Path(out), name, enabled
        keep = None if resumed_at is None else resumed_at + 1
        self.loggers = [self._make(kind, keep) for kind in loggers] if enabled else []

    def _make(self, kind: str, resume_step: int | None):
        """A logger of `trainer.loggers` (sbssl.registry.LOGGERS); `resume_step`: the first step to log again."""
        return LOGGERS[kind](self.out / LOGS / kind, self.name, resume_step)

    def steps(self, rows: list[dict]) -> None:
        """Per-step metrics ({"step": s, "loss": ..., "lr": ..., "wd": ...}), logged as train/NAME."""
        for row in rows:
            for lg in self.loggers:
                lg.log_metrics({f"train/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])

    def epoch(self, rec: dict) -> None:
        """One epoch's record: appended to log.jsonl as it is, its numbers to the loggers as epoch/NAME."""
        if not self.enabled:
            return
        with open(self.out / LOG, "a") as f:
            f.write(json.dumps(rec) + "\n")
        nums = {f"epoch/{k}": float(v) for k, v in rec.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "member")}
        for lg in self.loggers:
            lg.log_metrics(nums, step=int(rec["step"]))
            lg.save()

    def trim(self, keep: Callable[[dict], bool]) -> None:
        """Drop the log.jsonl records `keep` refuses (a resumed run's epochs after its checkpoint)."""
        if self.enabled:
            trim_jsonl(self.out / LOG, keep)

    def close(self) -> None:
        for lg in self.loggers:
            lg.finalize("success")
        self.loggers = []


# The loggers (registered in sbssl.registry.LOGGERS): make(root, stream, resume_step) -> a Fabric logger, whose
# steps from `resume_step` on are logged again (None: a new stream).
def csv_logger(root: Path, name: str, resume_step: int | None):
    """Fabric's CSV logger: ROOT/NAME/metrics.csv. Its writer deletes an earlier file: the kept rows go back."""
    from lightning_fabric.loggers import CSVLogger

    kept = [] if resume_step is None else csv_rows(root / name / "metrics.csv", resume_step)
    logger = CSVLogger(root, name=name, version="")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.experiment  # noqa: B018
    for row in kept:
        logger.log_metrics({k: float(v) for k, v in row.items() if k != "step" and v != ""}, step=int(row["step"]))
    logger.save()
    return logger


def tensorboard_logger(root: Path, name: str, resume_step: int | None):
    """Fabric's TensorBoard logger: event files under ROOT/NAME; a resumed stream purges the steps it redoes."""
    try:
        from lightning_fabric.loggers import TensorBoardLogger

        return TensorBoardLogger(root, name=name, version="", default_hp_metric=False, purge_step=resume_step)
    except ModuleNotFoundError:
        raise _missing("tensorboard") from None


def mlflow_logger(root: Path, name: str, resume_step: int | None):
    """MLflow, to a local SQLite store, ROOT/mlflow.db (`mlflow ui --backend-store-uri sqlite:///ROOT/mlflow.db`)."""
    try:
        from sbssl.engine.mlflow_logger import MLflowLogger
    except ModuleNotFoundError:
        raise _missing("mlflow") from None
    return MLflowLogger(root, name, resume_step)


def _missing(kind: str):
    from sbssl.errors import SbsslError

    return SbsslError(f"trainer.loggers=[{kind}] needs the {kind} package: pip install 'sbssl[{kind}]'")


def csv_rows(path: Path, before_step: int) -> list[dict]:
    """The rows of a logger's CSV logged before `before_step` (a torn last row is dropped)."""
    if not path.is_file():
        return []
    kept = []
    for row in csv.DictReader(io.StringIO(path.read_text())):
        try:
            if int(row["step"]) < before_step:
                kept.append(row)
        except (KeyError, TypeError, ValueError):  # a torn row
            continue
    return kept
