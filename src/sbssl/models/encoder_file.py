"""The GMML encoder file: safetensors weights (as timm names them) plus string metadata that rebuilds the encoder
(architecture, stem) and its preprocessing record. Written by `sbssl pretrain`, shipped in `sbssl/weights/`, read
by fine-tuning as `init=RUN|PATH|builtin:NAME`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from timm.models.vision_transformer import VisionTransformer

from sbssl.config import load_config
from sbssl.data.preprocessing import Preprocessing
from sbssl.errors import SbsslError
from sbssl.models.vit import VIT_NAMES, in_chans_of, stem_of
from sbssl.utils.io import atomic_write
from sbssl.utils.rundir import ENCODER

FORMAT = "sbssl-gmml-encoder"


def encoder_meta(encoder: VisionTransformer, name: str) -> dict[str, str]:
    """What rebuilds the encoder (stored in safetensors metadata); a patch-stem encoder loads into
    `timm.create_model` as it is (with `depth=` when it has fewer blocks than the named model)."""
    return {"timm_name": VIT_NAMES[name], "name": name, "img_size": str(encoder.patch_embed.img_size[0]),
            "patch_size": str(encoder.patch_embed.patch_size[0]), "in_chans": str(in_chans_of(encoder)),
            "stem": stem_of(encoder), "depth": str(len(encoder.blocks))}


def save_encoder(encoder: VisionTransformer, name: str, pre: Preprocessing, path: Path) -> None:
    """The encoder alone, as timm names its weights, plus what rebuilds it and its preprocessing record."""
    meta = {**encoder_meta(encoder, name), **pre.to_meta(), "format": FORMAT}
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


def encoder_init(init: str) -> tuple[dict[str, torch.Tensor], dict[str, str], Path] | None:
    """`scratch` -> None; a GMML run folder or encoder.safetensors -> (weights, metadata, path)."""
    if init in ("", "scratch", "random"):
        return None
    if init.startswith("builtin:"):
        from sbssl.weights import builtin_path

        path = builtin_path(init.split(":", 1)[1])
    else:
        path = Path(init)
    if path.is_dir():
        path = path / ENCODER
    sd, meta = read_safetensors(path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}  # shipped encoders are fp16
    if meta.get("format") != FORMAT:
        raise SbsslError(f"{path}: not a GMML encoder written by `sbssl pretrain`")
    try:  # every field present and of the right type
        apply_encoder_meta(load_config(), meta)
        Preprocessing.from_meta(meta)
    except (KeyError, ValueError, SbsslError) as e:
        raise SbsslError(f"{path}: damaged encoder metadata ({type(e).__name__}: {str(e)[:80]})") from None
    return sd, meta, path


def apply_encoder_meta(cfg: DictConfig, meta: dict[str, str]) -> None:
    """Fine-tuning takes the pretrained encoder's architecture and the input geometry it learnt at (its
    intensity scaling travels in the preprocessing record, `Preprocessing.from_meta`)."""
    cfg.model.name, cfg.model.patch_size = meta["name"], int(meta["patch_size"])
    cfg.model.in_chans, cfg.data.img_size = int(meta["in_chans"]), int(meta["img_size"])
    cfg.model.stem = meta.get("stem", "patch")
    cfg.model.depth = int(meta.get("depth", 0))  # encoders written before the key existed have the named depth
    # The region of interest sets the scale the encoder learnt at; encoders written before it existed saw it all.
    cfg.data.crop, cfg.data.slab = float(meta.get("crop", 1.0)), float(meta.get("slab", 1.0))
    # data.roi stays the user's: an exam's ROI box (KneeMRI) is a per-exam choice, not the encoder's scale.


