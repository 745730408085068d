"""The GMML encoder file: safetensors weights (as timm names them) plus string metadata that rebuilds the encoder
(architecture, stem) and its preprocessing record. Written by `sbssl pretrain`, shipped in `sbssl/weights/`, read
by fine-tuning as `init=RUN|PATH|builtin:NAME`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from sbssl.config import load_config
from sbssl.data.preprocessing import Preprocessing
from sbssl.errors import SbsslError
from sbssl.models.vit import in_chans_of, stem_of
from sbssl.registry import CNNS, VITS
from sbssl.utils.io import atomic_write
from sbssl.utils.rundir import ENCODER

if TYPE_CHECKING:
    from sbssl.models.imported import ImportedWeights

FORMAT = "sbssl-gmml-encoder"


def encoder_meta(encoder: torch.nn.Module, name: str) -> dict[str, str]:
    """What rebuilds the encoder (stored in safetensors metadata); a patch-stem encoder loads into
    `timm.create_model` as it is (with `depth=` when it has fewer blocks than the named model). A CNN is rebuilt
    from its name, input size and channels."""
    if name in CNNS:
        return {"name": name, "img_size": str(encoder.img_size), "in_chans": str(encoder.in_chans)}
    return {"timm_name": VITS[name], "name": name, "img_size": str(encoder.patch_embed.img_size[0]),
            "patch_size": str(encoder.patch_embed.patch_size[0]), "in_chans": str(in_chans_of(encoder)),
            "stem": stem_of(encoder), "depth": str(len(encoder.blocks))}


def save_encoder(encoder: torch.nn.Module, name: str, pre: Preprocessing, path: Path, pretext: str = "gmml"
                 ) -> None:
    """The encoder alone, as timm names its weights, plus what rebuilds it, its preprocessing record and the
    pretext that trained it (gmml, jigsaw, jigsaw+noise), which runs started from it carry in their `init`."""
    meta = {**encoder_meta(encoder, name), **pre.to_meta(), "format": FORMAT, "pretext": pretext}
    sd = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    atomic_write(path, lambda p: save_file(sd, str(p), metadata=meta))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata; a damaged or foreign file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise SbsslError(f"{path}: file not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise SbsslError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:100]})") from None


def _format(path: Path) -> str | None:
    """The `format` field of a safetensors file's metadata (None for a file of another writer, or unreadable)."""
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class PretrainedEncoder:
    """A GMML encoder file read back: its weights (fp32), the metadata that rebuilds it, where it came from."""

    weights: dict[str, torch.Tensor]
    meta: dict[str, str]
    path: Path

    # its batch norms' running statistics are those its later layers learnt on (finetune.recalibrate_bn)
    batch_norm_statistics = True

    @property
    def tag(self) -> str:
        """run.json's init is "<tag>:<path>": the pretext that made the encoder (files before it was stored:
        GMML)."""
        return self.meta.get("pretext", "gmml")

    @property
    def preprocessing(self) -> Preprocessing:
        """The input preparation the encoder learnt on (its region of interest and intensity scaling)."""
        return Preprocessing.from_meta(self.meta)

    def architecture(self, roi: str = "center") -> dict[str, dict]:
        """The model and input-geometry keys a classifier must take from the encoder, as a config fragment; the
        intensity scaling travels in the preprocessing record. Encoders written before `depth` existed have the
        named model's depth (0); before the region of interest existed, they saw the whole field (1.0). A CNN has
        no patch, stem or depth to fix. With `roi` acl the region is the user's (`configure`): img_size alone."""
        m = self.meta
        model = {"name": m["name"], "in_chans": int(m["in_chans"])}
        if m["name"] not in CNNS:
            model |= {"patch_size": int(m["patch_size"]), "stem": m.get("stem", "patch"),
                      "depth": int(m.get("depth", 0))}
        region = {} if roi == "acl" else {"crop": float(m.get("crop", 1.0)), "slab": float(m.get("slab", 1.0))}
        return {"model": model, "data": {"img_size": int(m["img_size"]), **region}}

    def configure(self, cfg: DictConfig) -> DictConfig:
        """A copy of `cfg` with the encoder's architecture (the user's `cfg` is left as asked). data.roi stays
        the user's: an exam's ROI box (KneeMRI) is a per-exam choice, not the encoder's scale. With data.roi=acl
        the region (crop: the window about the ligament; slab) stays the user's too: the window is the task's
        choice, while about the knee (or the centre) the encoder's crop is the scale its weights learnt."""
        return with_architecture(cfg, self.architecture(str(cfg.data.roi)))

    def load_into(self, encoder: torch.nn.Module) -> torch.nn.Module:
        """These weights into an encoder built from `configure`d config; a mismatch is one line naming the file."""
        try:
            encoder.load_state_dict(self.weights)
        except RuntimeError as e:
            raise SbsslError(f"{self.path}: weights do not fit the encoder ({str(e).splitlines()[0][:100]})") from None
        return encoder


def init_preprocessing(init: PretrainedEncoder | ImportedWeights | None, cfg: DictConfig, mean: float,
                       std: float) -> Preprocessing:
    """The record a run starting from `init` prepares its inputs with: a GMML encoder's own (the scale and
    intensity statistics its weights learnt; the region mode stays the config's), else the config's sizes with
    this set's statistics (random init, ImageNet weights)."""
    if init is not None and init.preprocessing is not None:
        region = {"crop": float(cfg.data.crop), "slab": float(cfg.data.slab)} if cfg.data.roi == "acl" else {}
        return replace(init.preprocessing, roi=str(cfg.data.roi), **region)
    return Preprocessing.from_config(cfg, mean, std)


def with_architecture(cfg: DictConfig, arch: dict) -> DictConfig:
    """A copy of `cfg` with an architecture record (`PretrainedEncoder.architecture`, a run's `run.json`) merged."""
    out = copy.deepcopy(cfg)
    for section, keys in arch.items():
        for k, v in keys.items():
            out[section][k] = v
    return out


def encoder_init(init: str) -> PretrainedEncoder | ImportedWeights | None:
    """`scratch` -> None; `builtin:NAME`, a GMML run folder or its encoder.safetensors -> the encoder, checked
    (a `PretrainedEncoder`); a torchvision AlexNet or timm ViT weights file -> `models.imported.ImportedWeights`."""
    if init in ("", "scratch", "random"):
        return None
    if init.startswith("builtin:"):
        from sbssl.weights import builtin_path

        path = builtin_path(init.split(":", 1)[1])
    else:
        path = Path(init)
    if path.is_dir():
        path = path / ENCODER
    if path.suffix != ".safetensors" or (path.is_file() and _format(path) != FORMAT):
        from sbssl.models.imported import imported_init

        return imported_init(path)
    sd, meta = read_safetensors(path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}  # shipped encoders are fp16
    if meta.get("format") != FORMAT:
        raise SbsslError(f"{path}: not a GMML encoder written by `sbssl pretrain`")
    enc = PretrainedEncoder(sd, meta, path)
    try:  # every field present and of the right type
        enc.configure(load_config())
        enc.preprocessing  # noqa: B018
    except (KeyError, ValueError, SbsslError) as e:
        raise SbsslError(f"{path}: damaged encoder metadata ({type(e).__name__}: {str(e)[:80]})") from None
    return enc


def load_encoder(name_or_path: str | Path) -> tuple[torch.nn.Module, Preprocessing]:
    """The pretrained encoder (`builtin:cpu`, an encoder file or a GMML run folder), built as it was trained and
    in eval mode, with the preprocessing its inputs need (`Preprocessing.prepare`, then `.normalise`)."""
    from sbssl.models.build import build_encoder

    enc = encoder_init(str(name_or_path))
    if enc is None:
        raise SbsslError(f"load_encoder: {name_or_path!r} names no pretrained encoder")
    return enc.load_into(build_encoder(enc.configure(load_config()))).eval(), enc.preprocessing
