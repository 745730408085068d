"""The typed configuration of every command: defaults < --config FILE < key=value overrides.

One schema (OmegaConf structured dataclasses) for all commands; each reads the sections
it needs. Unknown keys and ill-typed values are refused with one clear line.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sbssl.data.layout import ALL_PLANES, PLANES, ROI_MODES, TASKS
from sbssl.errors import ConfigError
from sbssl.registry import AGGREGATORS, CNNS, LOGGERS, MASK_REPLACEMENTS, SLICE_FEATURES, STEMS, VITS

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    root: str = ""
    plane: str = "sagittal"  # sagittal | coronal | axial; all (pretraining only: every plane's slices)
    task: str = "acl"  # acl | meniscus | abnormal
    img_size: int = 256
    crop: float = 1.0  # region of interest: central fraction of each in-plane side kept (1 = the full field)
    slab: float = 1.0  # region of interest: central fraction of the stack kept (1 = every slice)
    roi: str = "center"  # center (crop + slab) | knee: about the knee (data/localise.py) | acl: a window of crop x the
    # field about the ACL a shipped localiser finds (data/acl_region.py) | box: roi.csv
    cache_dir: str = ""  # default: ROOT/.sbssl-cache, else ~/.cache/sbssl
    workers: int = 0  # DataLoader worker processes (the cache makes 0 fast enough on CPU)
    mean: float = -1.0  # dataset statistics of [0,1]-scaled slices; -1 = from the train split
    std: float = -1.0


@dataclass
class ModelConfig:
    name: str = "vit_small"  # vit_tiny | vit_small | vit_base | mrnet_cnn
    patch_size: int = 16
    depth: int = 0  # transformer blocks; 0 = the named ViT's 12 (fewer: a cheaper encoder, e.g. for tests)
    stem: str = "patch"  # patch (the paper's linear patchify) | conv (stride-2 convolutions, for small data)
    in_chans: int = 1
    drop_path: float = 0.1
    skip_blocks: list[int] = field(default_factory=lambda: [6, 8, 10, 12])  # 1-indexed, of depth 12
    decoder_dim: int = 0  # width of the light decoder's point-wise layers; 0 = encoder width (a CNN's: 128)
    conv_masking: str = "dense"  # GMML with a CNN encoder: dense (the corrupted image through plain convolutions)
    # | sparse (masked positions dropped, SparK): models/gmml_cnn.py
    grad_checkpointing: bool = False


@dataclass
class MaskConfig:
    max_ratio: float = 0.7  # the paper's "up to 70%"
    align: int = 1  # 1 = pixel-level groups; patch_size = patch-aligned groups
    type: str = "noise"  # zeros | ones | noise | image | mix (or a comma list, e.g. "zeros,noise")
    max_block: float = 0.3  # rectangle sides up to this fraction of the image
    # the reconstruction target: 0 = the standardised slice (the paper's); p > 0 = each p x p patch standardised
    # by its own mean and std (MAE's norm_pix_loss), so that faint local contrast weighs as much as bright edges;
    # on selection family clinic it did not help (docs/results.md, select_clinic_normpatch)
    norm_patch: int = 0


@dataclass
class JigsawConfig:
    permutations: int = 100  # the puzzle's classes: permutations of 9 tiles at maximal Hamming distance (jigsaw.py)
    gap: int = 1  # pixels between tiles (a tile is a random crop of its grid cell, cell - gap on a side)
    noise: float = 0.0  # std of Gaussian noise added to each tile (the "[20] + noise" row), standardised units


@dataclass
class AugmentConfig:
    crop_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    flip: float = 0.5
    blur: float = 0.1  # probability; sigma in blur_sigma
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    sharpness: float = 0.2  # probability of a random sharpness change
    brightness: float = 0.2
    contrast: float = 0.2
    jitter: float = 0.8  # probability of the brightness/contrast jitter


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64  # per device
    lr: float = 5e-4  # base lr, scaled by global batch / 256
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    hold_epochs: float = 0  # continued pretraining (init=ENCODER): the encoder's lr is 0 for this many epochs
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    seed: int = 0
    deterministic: bool = False
    compile: bool = False
    recon_every: int = 10  # epochs between reconstruction grids
    max_steps: int = -1  # stop after this many optimiser steps (smoke tests); -1 = no limit
    nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss does


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto = bf16-mixed where the hardware has it, else 32-true
    loggers: list[str] = field(default_factory=lambda: ["csv"])  # + tensorboard, mlflow (engine/run_log.py), or []
    rendezvous_timeout_s: float = 120.0  # DDP: how long the processes wait for each other to start


@dataclass
class FinetuneConfig:
    ensemble: int = 5
    aggregator: str = "concat"  # concat | max | mean | attention | instance (scores every patch token, max)
    slice_feature: str = "cls"  # cls (the paper's class token) | max | mean over the patch tokens
    slices: int = 32  # f: every exam is resampled to f evenly spaced slices; 0 = all (not for concat)
    val_fraction: float = 0.2  # held-out part of train for model selection (never the reported split)
    oversample: bool = True
    layer_decay: float = 1.0  # 1.0 = off
    batch_exams: int = 8
    select: str = "auto"  # auc (best held-out AUC) | last (no held-out part: every labelled exam fits, the last
    # epoch kept) | auto: auc when the held-out part would hold min_heldout exams of each class, else last
    min_heldout: int = 5
    # shared: one stratified part chooses every member's epoch | member: member m holds out fold m of a stratified
    # k-fold, k = round(1 / val_fraction), so that each member chooses its epoch on its own exams and every labelled
    # exam trains k - 1 of k members (a cross-validation ensemble; finetune/demo's since 2026-12-07). Fusion fits
    # on the held-out exams either way (out of fold with member)
    holdout: str = "shared"
    freeze: bool = False  # linear probing: the encoder stays as initialised, only aggregator + head train
    # from an encoder: its batch norms (a ViT's conv stem) normalise by their running statistics, re-estimated on
    # the clean slices, in fine-tuning too instead of by each batch of a few exams (as detection freezes them)
    frozen_bn: bool = False
    # from an encoder: re-estimate its batch norms' running statistics on the clean slices first (engine/finetune:
    # recalibrate_batch_norm); false keeps the statistics it was pretrained with (its record's scale and contrast),
    # as finetune/demo does since 2026-12-07 (docs/results.md). Imported weights have none: always estimated.
    recalibrate_bn: bool = True
    probe_steps: int = 0  # LP-FT: first fit aggregator + head on the frozen encoder's features (0 = off);
    # the solver's iterations (L-BFGS) or steps (AdamW)
    probe_solver: str = "lbfgs"  # lbfgs (full batch, to convergence) | adamw (minibatches; the lr and batch below)
    probe_restarts: int = 8  # lbfgs: initial weights tried, the lowest training objective kept (engine/probe.py)
    probe_lr: float = 3.0e-3  # adamw only: the read-out's lr (not scaled with the batch)
    probe_batch_exams: int = 64  # adamw only
    probe_l2: float = 0.0  # the read-out's Gaussian prior, in pseudo-exams (engine/probe.py: weight_penalty)
    labels: int = 0  # use only this many labelled train exams (stratified, nested as it grows); 0 = all


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    jigsaw: JigsawConfig = field(default_factory=JigsawConfig)
    pretext: str = "gmml"  # stage 1's task: gmml (the paper's) | jigsaw (reference [20], a CNN encoder)
    init: str = "scratch"  # scratch | builtin:cpu | a GMML encoder.safetensors (or its run folder) | ImageNet weights
    # | auto (fine-tuning: builtin:cpu on the demo's synthetic sets, else GMML pretrained on the folder's own train
    # slices first, workflow.auto_init); in pretraining, an encoder to continue from


def choices() -> dict[str, tuple[str, ...]]:
    """Each enumerated key's allowed values: the parts from their registries (sbssl.registry, so a part registered
    at run time is a valid value), the rest fixed here."""
    return {
        "data.plane": (*PLANES, ALL_PLANES),
        "data.task": TASKS,
        "data.roi": ROI_MODES,
        "model.name": (*VITS, *CNNS),
        "finetune.aggregator": AGGREGATORS.names(),
        "finetune.select": ("auc", "last", "auto"),
        "finetune.holdout": ("shared", "member"),
        "finetune.slice_feature": SLICE_FEATURES.names(),
        "model.stem": STEMS.names(),
        "model.conv_masking": ("sparse", "dense"),
        "pretext": ("gmml", "jigsaw"),
        "train.nonfinite": ("stop", "skip"),
    }


def find_config(name: str) -> Path:
    """A path, or a shipped recipe name such as 'pretrain/demo'."""
    p = Path(name)
    if p.exists():
        return p
    shipped = CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if shipped.exists():
        return shipped
    raise ConfigError(f"{name}: config file not found")


def load_config(file: str | None = None, overrides: list[str] | None = None, base: DictConfig | None = None
                ) -> DictConfig:
    """Schema defaults, then `base` (e.g. a run's saved config), then the file, then overrides."""
    layers: list[DictConfig] = [] if base is None else [base]
    try:
        if file:
            path = find_config(file)
            try:
                loaded = OmegaConf.load(path)
            except Exception as e:
                raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0][:120]})") from None
            if not isinstance(loaded, DictConfig):
                raise ConfigError(f"{path}: want a mapping of sections at the top level")
            layers.append(loaded)
        for o in overrides or []:
            if "=" not in o:
                raise ConfigError(f"override '{o}': want key=value (e.g. train.epochs=5)")
        for o in overrides or []:
            try:
                layers.append(OmegaConf.from_dotlist([o]))
            except yaml.YAMLError as e:
                raise ConfigError(f"override '{o[:60]}': not a valid value ({str(e).splitlines()[0][:80]})") from None
        cfg = OmegaConf.merge(_schema(), *layers)  # one merge: each would copy the whole config again
        OmegaConf.resolve(cfg)  # a broken ${interpolation} fails here, not in the middle of training
        validate(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {_omega_msg(e)}") from None
    return cfg


@functools.cache
def _schema() -> DictConfig:
    """The structured schema, built once (~50 ms each time); merge copies it, so it is never changed."""
    return OmegaConf.structured(Config)


def validate(cfg: DictConfig) -> None:
    for key, allowed in choices().items():
        v = OmegaConf.select(cfg, key)
        if v not in allowed:
            raise ConfigError(f"config: {key}={v!r} is not one of {', '.join(allowed)}")
    types = [t.strip() for t in str(cfg.mask.type).split(",")]
    if types != ["mix"] and (not types or any(t not in MASK_REPLACEMENTS for t in types)):
        raise ConfigError(f"config: mask.type={cfg.mask.type!r}: want {', '.join(MASK_REPLACEMENTS)}, mix (all of "
                          f"them) or a comma list")
    checks = [
        ("mask.max_ratio", 0 < cfg.mask.max_ratio <= 0.95, "in (0, 0.95]"),
        ("mask.align", cfg.mask.align >= 1 and cfg.data.img_size % cfg.mask.align == 0,
         "a divisor of data.img_size"),
        ("mask.norm_patch", cfg.mask.norm_patch == 0 or (cfg.mask.norm_patch >= 2
                                                         and cfg.data.img_size % cfg.mask.norm_patch == 0),
         "0 or a divisor of data.img_size of at least 2"),
        ("data.img_size", cfg.data.img_size >= 8, ">= 8"),
        ("data.crop", 0 < cfg.data.crop <= 1, "in (0, 1]"),
        ("data.slab", 0 < cfg.data.slab <= 1, "in (0, 1]"),
        ("data.roi", cfg.data.roi != "acl" or cfg.data.plane == "sagittal",
         "not acl outside data.plane=sagittal (the ACL localiser reads sagittal series)"),
        ("data.roi", cfg.data.roi != "acl" or cfg.data.task == "acl",
         "not acl for data.task other than acl (its window is centred on the ligament; data.roi=knee for the menisci "
         "and the abnormal task)"),
        ("model.patch_size", cfg.model.patch_size >= 1 and cfg.data.img_size % cfg.model.patch_size == 0,
         "a divisor of data.img_size"),
        ("model.in_chans", cfg.model.in_chans in (1, 3), "1 or 3"),
        ("model.name", cfg.pretext != "jigsaw" or cfg.model.name in CNNS, "a CNN for pretext=jigsaw"),
        ("jigsaw.permutations", 2 <= cfg.jigsaw.permutations <= 5000, "in [2, 5000]"),
        ("jigsaw.gap", cfg.pretext != "jigsaw" or 0 <= cfg.jigsaw.gap < cfg.data.img_size // 3 - 2,
         "at least 0, leaving tiles of 3 px"),
        ("jigsaw.noise", cfg.jigsaw.noise >= 0, ">= 0"),
        ("model.depth", cfg.model.depth >= 0, ">= 0 (0: the named ViT's)"),
        ("model.patch_size", cfg.model.stem == "patch" or cfg.model.patch_size in (2, 4, 8, 16, 32),
         "a power of two with model.stem=conv"),
        ("train.epochs", cfg.train.epochs >= (0 if cfg.finetune.probe_steps > 0 else 1),
         ">= 1 (0 only with finetune.probe_steps > 0)"),
        ("train.batch_size", cfg.train.batch_size >= 1, ">= 1"),
        ("trainer.rendezvous_timeout_s", cfg.trainer.rendezvous_timeout_s > 0, "> 0"),
        ("train.lr", cfg.train.lr > 0, "> 0"),
        ("finetune.ensemble", cfg.finetune.ensemble >= 1, ">= 1"),
        ("finetune.slices", cfg.finetune.slices >= (1 if cfg.finetune.aggregator == "concat" else 0),
         ">= 1 for concat, >= 0 otherwise"),
        ("finetune.val_fraction", 0 < cfg.finetune.val_fraction < 1, "in (0, 1)"),
        ("finetune.min_heldout", cfg.finetune.min_heldout >= 1, ">= 1"),
        ("finetune.probe_steps", cfg.finetune.probe_steps >= 0, ">= 0"),
        ("finetune.probe_solver", cfg.finetune.probe_solver in ("lbfgs", "adamw"), "lbfgs or adamw"),
        ("finetune.probe_restarts", cfg.finetune.probe_restarts >= 1, ">= 1"),
        ("finetune.probe_lr", cfg.finetune.probe_lr > 0, "> 0"),
        ("finetune.probe_batch_exams", cfg.finetune.probe_batch_exams >= 1, ">= 1"),
        ("finetune.probe_l2", cfg.finetune.probe_l2 >= 0, ">= 0"),
        ("finetune.labels", cfg.finetune.labels == 0 or cfg.finetune.labels >= 4, "0 (all) or >= 4"),
    ]
    unknown = [v for v in cfg.trainer.loggers if v not in LOGGERS]
    if unknown:
        raise ConfigError(f"config: trainer.loggers has {unknown[0]!r}: want a list of {', '.join(LOGGERS)}")
    for key, ok, want in checks:
        if not ok:
            raise ConfigError(f"config: {key}={OmegaConf.select(cfg, key)!r} must be {want}")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def _omega_msg(e: OmegaConfBaseException) -> str:
    msg = str(e).splitlines()[0]
    key = getattr(e, "full_key", None)
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return f"unknown key '{key or msg}'"
    if key:
        return f"{key}: {msg}"
    return msg
