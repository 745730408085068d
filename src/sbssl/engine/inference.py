"""Building exam classifiers, loading a run's ensemble, and batched exam prediction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sbssl.config import load_config
from sbssl.data.cache import SliceCache
from sbssl.data.datasets import gather_exams, gather_index
from sbssl.data.preprocessing import Preprocessing
from sbssl.errors import SbsslError
from sbssl.models.build import build_classifier
from sbssl.models.encoder_file import read_safetensors, with_architecture
from sbssl.models.slice_classifier import SliceClassifier
from sbssl.utils.rundir import CONFIG, RUN


@dataclass
class Ensemble:
    """A fine-tuned run: its config (as trained: the user's with the encoder's architecture), preprocessing
    record, one model per member seed, where it started from."""

    cfg: DictConfig
    models: list[SliceClassifier]
    seeds: list[int]
    pre: Preprocessing
    init: str = "scratch"  # "<pretext>:<encoder path>" (gmml, jigsaw), "imported:<file>" or "scratch"
    root: str = ""  # the dataset it was trained on
    device: str = "cpu"

    def member_probs(self, cache: SliceCache, exams: np.ndarray, scorers: list | None = None) -> np.ndarray:
        """Every member's P(positive) for these exams of `cache`, (members, exams): the one way an ensemble
        scores (evaluate, predict, explain, fusion, the Python API), under one precision rule: bf16 autocast
        where the device runs it fast (`runtime.inference_bf16`), fp32 elsewhere. `scorers`: the members
        compiled (`compile_for_inference`)."""
        from sbssl.engine.runtime import inference_bf16

        bf16 = inference_bf16(self.device)
        return np.stack([predict_probs(m, cache, np.asarray(exams), self.pre, self.device,
                                       self.cfg.finetune.batch_exams, autocast=bf16) for m in scorers or self.models])


def read_run_record(run: Path, cfg: DictConfig) -> dict:
    """run.json; a run written before it existed keeps these in its config.yaml (the encoder's architecture
    merged in, as runs then saved it)."""
    path = Path(run) / RUN
    if path.is_file():
        try:
            rec = json.loads(path.read_text())
            return {"pre": Preprocessing.from_dict(rec["preprocessing"]), "init": rec.get("init", "scratch"),
                    "root": rec.get("root", ""), "architecture": dict(rec.get("architecture", {}))}
        except (ValueError, KeyError, TypeError) as e:
            raise SbsslError(f"{path}: damaged run record ({type(e).__name__})") from None
    return {"pre": Preprocessing.from_config(cfg, cfg.data.mean, cfg.data.std), "init": str(cfg.init),
            "root": str(cfg.data.get("root", "") or ""), "architecture": {}}


def load_ensemble(run: Path, device: torch.device | str = "cpu") -> Ensemble:
    """A fine-tuned run folder's members, rebuilt from its config.yaml and the architecture record in run.json."""
    run = Path(run)
    cfg_path = run / CONFIG
    if not cfg_path.is_file():
        raise SbsslError(f"{run}: not a fine-tuned run (no config.yaml)")
    try:
        saved = OmegaConf.load(cfg_path)
    except Exception as e:  # YAML and OmegaConf raise many types for a damaged file
        raise SbsslError(f"{cfg_path}: unreadable run config ({str(e).splitlines()[0][:100]})") from None
    rec = read_run_record(run, load_config(None, None, base=saved))
    try:
        cfg = with_architecture(load_config(None, None, base=saved), rec.pop("architecture"))
    except Exception as e:  # a hand-edited record: unknown keys, wrong types
        raise SbsslError(f"{run / RUN}: damaged architecture record ({str(e).splitlines()[0][:100]})") from None
    pre = rec["pre"]  # the record is what training read: the slice caches of evaluation must cut the same region
    cfg.data.img_size, cfg.data.crop, cfg.data.slab, cfg.data.roi = pre.img_size, pre.crop, pre.slab, pre.roi
    files = sorted(run.glob("model-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        raise SbsslError(f"{run}: no model-<seed>.safetensors (is the fine-tuning finished?)")
    models, seeds = [], []
    for f in files:
        sd, _ = read_safetensors(f)
        model = build_classifier(cfg)
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise SbsslError(f"{f}: weights do not fit the run's config ({str(e).splitlines()[0][:100]})") from None
        models.append(model.to(device).eval())
        seeds.append(int(f.stem.split("-")[1]))
    return Ensemble(cfg, models, seeds, **rec, device=str(device))


class FrozenCompiled(torch.nn.Module):
    """A model compiled by inductor with freezing: weights become constants pre-packed for oneDNN and bias /
    GELU fuse into the matmuls. The freezing switch is inductor's global config, so it is set only around
    this model's calls (compilation happens lazily, at the first one). `_orig_mod` is the eager model, as
    for torch.compile'd modules."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self._orig_mod = model.eval()
        self.compiled = torch.compile(self._orig_mod)

    def forward(self, *args, **kwargs):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def compile_for_inference(model: SliceClassifier) -> torch.nn.Module:
    """On this project's 2-core AMX CPU a bf16 ViT-S exam runs ~2x faster after a ~15 s compile
    (benchmarks/inference.py), so it pays from a few dozen exams on. The concat aggregator always reads
    f slices, so one compiled graph serves every exam. (`torch.compile(options={"freezing": True})`
    measured only 1.2x: the option does not reach the freezing pass.)"""
    return FrozenCompiled(model)


@dataclass
class FeatureTable:
    """Frozen-encoder features of the cache rows some exams read, looked up by cache row: only those rows are
    stored (token features, (T, K) per slice, make a table of every row of a large split too big to hold)."""

    feats: torch.Tensor  # (rows read, K) or (rows read, T, K)
    where: torch.Tensor  # cache row -> index into feats (-1 where not read)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.feats[self.where[rows]]


def rows_read(cache: SliceCache, exams: np.ndarray, slices: int) -> np.ndarray:
    """The sorted distinct cache rows that these exams' selected slices occupy."""
    return np.unique(gather_index(cache, np.asarray(exams), slices)[0])


@torch.no_grad()
def slice_feature_table(model: SliceClassifier, cache: SliceCache, exams: np.ndarray, pre: Preprocessing, device,
                        batch: int = 256) -> FeatureTable:
    """Frozen-encoder features of every slice these exams read: a linear probe then trains its head on table
    lookups, never running the encoder again. Precision is the caller's (fine-tuning runs it under Fabric's
    autocast)."""
    rows = rows_read(cache, exams, model.slices)
    model.eval()
    feats = [model.slice_features(pre.normalise(torch.from_numpy(cache.data[rows[i: i + batch]])[:, None]
                                                .to(device))).float() for i in range(0, len(rows), batch)]
    where = torch.full((len(cache.data),), -1, dtype=torch.long, device=device)
    where[torch.from_numpy(rows).to(device)] = torch.arange(len(rows), device=device)
    return FeatureTable(torch.cat(feats), where)


@torch.no_grad()
def predict_probs(model, cache: SliceCache, exams: np.ndarray, pre: Preprocessing, device, batch_exams: int = 8,
                  autocast: bool = False) -> np.ndarray:
    """P(positive) for each exam (softmax of the two logits), in the order given."""
    base = getattr(model, "_orig_mod", model)  # torch.compile'd
    base = base.module if hasattr(base, "module") else base  # Fabric-wrapped
    out = []
    for i in range(0, len(exams), batch_exams):
        chunk = np.asarray(exams[i: i + batch_exams])
        x, lengths = gather_exams(cache, chunk, base.slices)
        x = pre.normalise(x.to(device))
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x, lengths.to(device))
        out.append(logits.float().softmax(1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def score_split(ens: Ensemble, root: Path, split: str, cases: list[str] | None = None) -> tuple[list, np.ndarray]:
    """(the split's exam records, every member's P(positive) as (members, exams)); with `cases`, only those
    exams, in that order."""
    from sbssl.data.cache import slice_cache_for

    cache, records = slice_cache_for(ens.cfg, Path(root), split)
    exams = np.arange(len(records))
    if cases is not None:
        where = {r.case: i for i, r in enumerate(records)}
        missing = [c for c in cases if c not in where]
        if missing:
            raise SbsslError(f"exam {missing[0]} of the {split} split not found under {root}")
        exams = np.array([where[c] for c in cases], dtype=int)
        records = [records[i] for i in exams]
    return records, ens.member_probs(cache, exams)


def config_json(cfg: DictConfig) -> str:
    return json.dumps(OmegaConf.to_container(cfg, resolve=True))
