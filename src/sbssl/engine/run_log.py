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

from sbssl.utils.io import trim_jsonl
from sbssl.utils.rundir import LOG

LOGGERS = ("csv", "tensorboard")
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
        """A Fabric logger; `resume_step`: the first step to log again (earlier ones are kept)."""
        root = self.out / LOGS / kind
        if kind == "csv":
            from lightning_fabric.loggers import CSVLogger

            kept = [] if resume_step is None else csv_rows(root / self.name / "metrics.csv", resume_step)
            logger = CSVLogger(root, name=self.name, version="")
            with warnings.catch_warnings():  # its writer deletes an earlier metrics.csv: the kept rows go back
                warnings.simplefilter("ignore")
                logger.experiment  # noqa: B018
            for row in kept:
                logger.log_metrics({k: float(v) for k, v in row.items() if k != "step" and v != ""},
                                   step=int(row["step"]))
            logger.save()
            return logger
        if kind == "tensorboard":
            from lightning_fabric.loggers import TensorBoardLogger

            try:
                return TensorBoardLogger(root, name=self.name, version="", default_hp_metric=False,
                                         purge_step=resume_step)
            except ModuleNotFoundError:
                from sbssl.errors import SbsslError

                raise SbsslError("trainer.loggers=[tensorboard] needs the tensorboard package: "
                                 "pip install 'sbssl[tensorboard]'") from None
        raise ValueError(f"unknown logger {kind!r} (known: {', '.join(LOGGERS)})")

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
