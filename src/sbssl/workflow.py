"""What a command does across layers: fine-tuning trains the ensemble (engine) and then scores the reported split
once (evaluation). Kept above both, so that the engine never reaches up into evaluation.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sbssl.data.layout import ALL_PLANES
from sbssl.engine.finetune import train_ensemble
from sbssl.engine.inference import load_ensemble, score_split
from sbssl.engine.runtime import run_in_folder
from sbssl.errors import SbsslError
from sbssl.evaluation.report_files import write_evaluation
from sbssl.utils.rundir import METRICS


def finetune(cfg: DictConfig, root: Path, out: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """`sbssl finetune`: train the ensemble into `out`, then score the valid split once (predictions.csv,
    metrics.json, roc.png). metrics.json is the run's finished marker: a folder without it resumes."""
    if cfg.data.plane == ALL_PLANES:
        raise SbsslError("data.plane=all is for pretraining; a classifier reads one plane (fuse the three after)")

    def run(fabric, folder: Path) -> Path:
        train_ensemble(cfg, fabric, Path(root), folder)
        if fabric.global_rank == 0:
            ens = load_ensemble(folder, fabric.device)
            write_evaluation(folder, ens.cfg, "valid", *score_split(ens, root, "valid"), ens.seeds, ens.init)
        fabric.barrier()
        return folder

    return run_in_folder(cfg.trainer, out, overwrite, resume, METRICS, run)
