"""An MLflow logger for Lightning Fabric (Fabric ships CSV and TensorBoard; Lightning's MLFlowLogger needs the
Trainer package). A local store only: nothing is sent anywhere unless the user points MLflow elsewhere."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

from lightning_fabric.loggers.logger import Logger, rank_zero_experiment
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

EXPERIMENT = "sbssl"


def tracking_uri(root: Path) -> str:
    """MLflow 3 keeps runs in a database (its folder store is retired); SQLite needs no server."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


class MLflowLogger(Logger):
    """One stream of a run as one MLflow run (named after the stream) in a local SQLite store, ROOT/mlflow.db
    (`mlflow ui --backend-store-uri sqlite:///ROOT/mlflow.db`). A resumed stream continues its MLflow run; the
    steps it redoes are logged again there (MLflow keeps every value; its charts show the latest per step)."""

    def __init__(self, root: Path, name: str, resume_step: int | None = None):
        self._root, self._name = Path(root), name
        self._root.mkdir(parents=True, exist_ok=True)
        for noisy in ("mlflow", "alembic"):  # its schema migrations log at INFO on a new store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._client = MlflowClient(tracking_uri=tracking_uri(self._root))
            exp = self._client.get_experiment_by_name(EXPERIMENT)
            exp_id = exp.experiment_id if exp else self._client.create_experiment(EXPERIMENT)
            runs = self._client.search_runs([exp_id], f"tags.`mlflow.runName` = '{name}'")
            self._run_id = (runs[0].info.run_id if runs and resume_step is not None
                            else self._client.create_run(exp_id, run_name=name).info.run_id)
        self._pending: list[Metric] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def root_dir(self) -> str:
        return str(self._root)

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        return self._client

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Not used: a run's hyperparameters are its config.yaml."""

    def save(self) -> None:
        """One batched write per epoch (MLflow takes at most 1000 metrics a call)."""
        while self._pending:
            self._client.log_batch(self._run_id, metrics=self._pending[:1000])
            self._pending = self._pending[1000:]

    def finalize(self, status: str) -> None:
        self.save()
        self._client.set_terminated(self._run_id, "FINISHED" if status == "success" else "FAILED")
