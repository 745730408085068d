"""What a command does across layers: fine-tuning trains the ensemble (engine) and then scores the reported split
once (evaluation). Kept above both, so that the engine never reaches up into evaluation.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from sbssl.config import load_config
from sbssl.data.layout import ALL_PLANES, synth_family
from sbssl.engine.finetune import train_ensemble
from sbssl.engine.inference import load_ensemble, score_split
from sbssl.engine.pretrain import pretrain, pretraining_estimate
from sbssl.engine.runtime import run_in_folder
from sbssl.errors import SbsslError
from sbssl.evaluation.report_files import write_evaluation
from sbssl.utils.rundir import ENCODER, METRICS, prepare_run

log = logging.getLogger("sbssl")
AUTO = "auto"  # init=auto: the encoder that suits the data (auto_init)
OWN = "pretrain"  # the run folder's sub-folder where init=auto pretrains on the folder's own slices
OWN_RECIPE = "pretrain/cpu"  # the paper's setting at CPU scale (the shipped encoder's own recipe)


def finetune(cfg: DictConfig, root: Path, out: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """`sbssl finetune`: train the ensemble into `out`, then score the valid split once (predictions.csv,
    metrics.json, roc.png). metrics.json is the run's finished marker: a folder without it resumes.
    With init=auto the encoder is chosen (and, on a new kind of data, pretrained) first: `auto_init`."""
    if cfg.data.plane == ALL_PLANES:
        raise SbsslError("data.plane=all is for pretraining; a classifier reads one plane (fuse the three after)")
    if str(cfg.init) == AUTO:
        cfg, overwrite = auto_init(cfg, Path(root), Path(out), overwrite), False  # the folder is readied there

    def run(fabric, folder: Path) -> Path:
        train_ensemble(cfg, fabric, Path(root), folder)
        if fabric.global_rank == 0:
            ens = load_ensemble(folder, fabric.device)
            write_evaluation(folder, ens.cfg, "valid", *score_split(ens, root, "valid"), ens.seeds, ens.init)
        fabric.barrier()
        return folder

    return run_in_folder(cfg.trainer, out, overwrite, resume, METRICS, run)


def auto_init(cfg: DictConfig, root: Path, out: Path, overwrite: bool) -> DictConfig:
    """init=auto -> a copy of `cfg` starting from the encoder that suits `root`: the shipped one on the demo
    generator's sets (it was pretrained on 1,130 other knees of that kind); on any other folder an encoder
    pretrained first on the folder's own train slices, as the paper does (`sbssl pretrain --config pretrain/cpu`,
    no labels, into OUT/pretrain; a finished one is reused, an interrupted one resumes). The shipped encoder does
    not reliably transfer to other knees, and continuing GMML from it for a few epochs measured worse than the
    encoder itself (docs/results.md, "Transfer")."""
    if synth_family(root) == "demo":
        return with_init(cfg, "builtin:cpu")
    if int(os.environ.get("RANK", "0")) == 0:  # before any process group: one process readies the folder
        prepare_run(out, overwrite, False, METRICS)  # a finished run is refused now, not after the pretraining
    encoder = out / OWN / ENCODER
    if not encoder.exists():
        pcfg = own_pretraining_config(cfg)
        log.info("init=auto: %s is not the demo's synthetic set, so GMML first pretrains an encoder on its own "
                 "train slices: %s", root, pretraining_estimate(pcfg, root))
        pretrain(pcfg, root, out / OWN)
    return with_init(cfg, str(encoder))


def own_pretraining_config(cfg: DictConfig) -> DictConfig:
    """pretrain/cpu for the plane, region of interest, seed and devices the fine-tuning config asks for, so that
    the encoder learns on the crops it will classify."""
    pcfg = load_config(OWN_RECIPE, [f"data.plane={cfg.data.plane}", f"data.roi={cfg.data.roi}",
                                    f"data.crop={cfg.data.crop}", f"data.slab={cfg.data.slab}",
                                    f"data.workers={cfg.data.workers}", f"train.seed={cfg.train.seed}"])
    pcfg.trainer = copy.deepcopy(cfg.trainer)
    return pcfg


def with_init(cfg: DictConfig, init: str) -> DictConfig:
    out = copy.deepcopy(cfg)
    out.init = init
    return out
