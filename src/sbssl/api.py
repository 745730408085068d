"""The Python API (`import sbssl`): the functions the command line calls, and one object to score exams with.

    encoder, pre = sbssl.load_encoder("builtin:cpu")          # a timm ViT and its preprocessing record
    run = sbssl.finetune("finetune/demo", DATA, OUT, ["init=builtin:cpu"])
    model = sbssl.load_model(run)
    p = model.predict("knee.nii.gz")                            # P(tear), as `sbssl predict` scores it

Everything here is the CLI's own code path: `ExamClassifier.predict` prepares a volume exactly as training
prepared its slices and averages the members under the one precision rule (`Ensemble.member_probs`), so its
numbers are `predictions.csv`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from sbssl.config import load_config
from sbssl.data.cache import SliceCache
from sbssl.data.volume_io import case_id, check_volume, load_volume
from sbssl.engine.inference import Ensemble, load_ensemble
from sbssl.errors import SbsslError
from sbssl.models.encoder_file import load_encoder
from sbssl.utils.rundir import FUSION

Exam = np.ndarray | str | Path  # a volume (slices, H, W), or a .npy / NIfTI / DICOM path

__all__ = ["ExamClassifier", "evaluate", "finetune", "load_encoder", "load_model", "pretrain", "synthesize"]


def _config(config: str | Path | DictConfig | None, overrides: Sequence[str]) -> DictConfig:
    """A recipe name (`finetune/demo`), a YAML file or a config object, with key=value overrides, validated."""
    if isinstance(config, DictConfig):
        return load_config(None, list(overrides), base=config)
    return load_config(None if config is None else str(config), list(overrides))


def pretrain(config: str | Path | DictConfig | None, data: str | Path, out: str | Path,
             overrides: Sequence[str] = (), *, overwrite: bool = False, resume: bool = False) -> Path:
    """Stage 1, GMML on the unlabelled slices of `data` (`sbssl pretrain`); returns the encoder file's path."""
    from sbssl.engine.pretrain import pretrain as _pretrain

    return _pretrain(_config(config, overrides), Path(data), Path(out), overwrite=overwrite, resume=resume)


def finetune(config: str | Path | DictConfig | None, data: str | Path, out: str | Path,
             overrides: Sequence[str] = (), *, overwrite: bool = False, resume: bool = False) -> Path:
    """Stage 2, the exam classifier ensemble (`sbssl finetune`), scored once on the valid split; returns the run."""
    from sbssl.workflow import finetune as _finetune

    return _finetune(_config(config, overrides), Path(data), Path(out), overwrite=overwrite, resume=resume)


def evaluate(run: str | Path, data: str | Path | None = None, split: str = "valid", out: str | Path | None = None,
             device: str = "cpu") -> dict:
    """A run scored on a split (`sbssl evaluate`): AUC with its bootstrap interval, accuracy, ... (metrics.json's
    keys). `data` defaults to the dataset the run was trained on; `out` to an `evaluate-SPLIT` folder in the run."""
    from sbssl.evaluation.scoring import evaluate_run
    from sbssl.utils.rundir import run_root

    root = data or run_root(Path(run))
    if not root:
        raise SbsslError(f"{run}: give the dataset root (the run does not record one)")
    folder = Path(out) if out else Path(run) / f"evaluate-{split}"
    folder.mkdir(parents=True, exist_ok=True)
    return evaluate_run(Path(run), Path(root), split, folder, device)


def synthesize(out: str | Path, train: int = 400, valid: int = 120, size: int = 256, seed: int = 0,
               family: str = "demo", **knobs) -> Path:
    """A synthetic knee MRI set in MRNet-v1.0's layout (`sbssl synth`); `knobs`: the rest of `SynthSpec`."""
    from sbssl.synth import SynthSpec, generate
    from sbssl.synth.family import family as check_family

    check_family(family)
    generate(Path(out), SynthSpec(train, valid, size, seed, family=family, **knobs))
    return Path(out)


class ExamClassifier:
    """A fine-tuned run loaded for scoring: `predict` for probabilities, `explain` for a saliency overlay."""

    def __init__(self, ensemble: Ensemble):
        self.ensemble = ensemble

    @property
    def task(self) -> str:
        return str(self.ensemble.cfg.data.task)

    @property
    def preprocessing(self):
        return self.ensemble.pre

    def __repr__(self) -> str:
        cfg = self.ensemble.cfg
        return (f"ExamClassifier(task={self.task!r}, plane={cfg.data.plane!r}, model={cfg.model.name!r}, "
                f"members={len(self.ensemble.models)})")

    def predict(self, exams: Exam | Sequence[Exam]) -> float | np.ndarray:
        """P(task) of one exam (a float) or of a list of them (an array, in order). All exams go through the
        members together, `finetune.batch_exams` at a time."""
        one = isinstance(exams, (np.ndarray, str, Path))
        caches = [self._prepare(e) for e in ([exams] if one else list(exams))]
        if not caches:
            return np.zeros(0)
        p = self.ensemble.member_probs(_joined(caches), np.arange(len(caches))).mean(0)
        return float(p[0]) if one else p

    def explain(self, exam: Exam, out: str | Path, block: int = 10) -> dict:
        """A saliency overlay PNG at `out` (as `sbssl predict` draws them: class-token attention for a ViT,
        Grad-CAM for a CNN); returns the probability, each read slice's weight, which slices are shown, the maps
        and their kind."""
        from sbssl.data.datasets import gather_exams
        from sbssl.explain import explain_exam

        ens, cache = self.ensemble, self._prepare(exam)
        p = float(ens.member_probs(cache, np.array([0])).mean())
        x, lengths = gather_exams(cache, np.array([0]), ens.models[0].slices)
        shown = explain_exam(ens.models[0], x, lengths, ens.pre, block, Path(out),
                             f"{cache.cases[0]}: P({self.task}) = {p:.3f}", int(cache.offsets[-1]), ens.device)
        return {"probability": p, **shown}

    def _prepare(self, exam: Exam) -> SliceCache:
        """One exam as a one-exam cache, prepared as `sbssl predict` prepares it (a fault is a DataError)."""
        from sbssl.predict import exam_cache, roi_box

        if isinstance(exam, np.ndarray):
            if self.ensemble.pre.roi == "box":
                raise SbsslError("this model reads each exam's ROI box (data.roi=box): pass a path with a roi.csv")
            vol = check_volume(np.asarray(exam), Path("volume")).astype(np.float32, copy=False)
            return exam_cache(vol, self.ensemble, "volume")
        path = Path(exam)
        name = case_id(path)
        return exam_cache(load_volume(path), self.ensemble, name, roi_box(self.ensemble, path, name))


def _joined(caches: list[SliceCache]) -> SliceCache:
    """One-exam caches as one cache (their offsets chained), so the members score them in batches."""
    lengths = [len(c.data) for c in caches]
    return SliceCache(np.concatenate([c.data for c in caches]), np.concatenate([[0], np.cumsum(lengths)]),
                      [c.cases[0] for c in caches], caches[0].mean, caches[0].std)


def load_model(run: str | Path, device: str = "cpu") -> ExamClassifier:
    """A fine-tuned run folder (`sbssl finetune`'s OUT) ready to score exams."""
    if (Path(run) / FUSION).is_file():
        raise SbsslError(f"{run}: a fused model scores each exam's three planes: use `sbssl predict`")
    return ExamClassifier(load_ensemble(Path(run), device))

