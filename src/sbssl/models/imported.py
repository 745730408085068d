"""Weights a user already has, as a classifier's starting point (`init=FILE`): ImageNet transfer, MRNet's row of
Table 1, without any download. Two kinds are read:

- torchvision's AlexNet state dict (`.pth`) into the MRNet-style CNN (`model.name=mrnet_cnn`): its five
  convolutions' weights go to the CNN's five convolutions (the same widths and kernels); each convolution's bias
  becomes the bias of the batch norm that follows it (batch norm, absent from AlexNet, starts as the identity and
  is re-estimated on the slices before fine-tuning: engine/finetune.recalibrate_batch_norm).
- a timm ViT checkpoint (`.pth` or `.safetensors`) into the ViT of the same name (patch stem): the patch
  embedding resampled to the grid of `data.img_size`, any classifier head dropped.

In both, the RGB first convolution is folded to one grey channel with timm's `adapt_input_conv` (the sum over
RGB, as a grey slice repeated three times would give) rather than repeating the slice: the input stays one
channel and the cost stays that of one. Files are read without unpickling code (`torch.load(weights_only=True)`,
safetensors); a missing, truncated or foreign file is one line naming it.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors import SafetensorError
from safetensors.torch import load_file

from sbssl.errors import SbsslError
from sbssl.registry import CNNS

ALEXNET_CONVS = (0, 3, 6, 8, 10)  # torchvision's alexnet().features indices of its convolutions
SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or a pickled-tensors file, unwrapped from {"state_dict"|"model": ...}."""
    if not path.is_file():
        raise SbsslError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as e:  # weights_only refuses any pickled code: a clear line, nothing executed
        raise SbsslError(f"{path}: not a readable weights file ({str(e).splitlines()[0][:100]})") from None
    while isinstance(sd, dict) and len(sd) == 1 and next(iter(sd)) in ("state_dict", "model", "module"):
        sd = next(iter(sd.values()))
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SbsslError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in sd.items()}


def kind_of(sd: dict[str, torch.Tensor]) -> str:
    """"alexnet" (torchvision), "vit" (timm) or "unknown"."""
    if all(f"features.{i}.weight" in sd for i in ALEXNET_CONVS):
        return "alexnet"
    if "patch_embed.proj.weight" in sd and "blocks.0.attn.qkv.weight" in sd:
        return "vit"
    return "unknown"


@dataclass(frozen=True)
class ImportedWeights:
    """An `init=FILE` that is not an sbssl encoder: the architecture and preprocessing are the config's own (the
    intensity statistics from the training slices, as from random init); `load_into` converts the weights."""

    weights: dict[str, torch.Tensor]
    path: Path
    kind: str

    preprocessing = None  # no record: the run computes its own, as from random init
    tag = "imported"  # run.json's init: "imported:<path>"
    # AlexNet has no batch norm and a timm ViT's patch stem none: nothing to keep, they are always estimated
    batch_norm_statistics = False

    def configure(self, cfg: DictConfig) -> DictConfig:
        """The user's config, checked against the file: an AlexNet for the MRNet-style CNN (no file starts
        ResNet-18), a ViT for a patch-stem ViT."""
        want = {"mrnet_cnn": "alexnet"}.get(cfg.model.name, "none" if cfg.model.name in CNNS else "vit")
        if self.kind != want:
            raise SbsslError(f"{self.path}: {self.kind} weights cannot start model.name={cfg.model.name} "
                             f"(an AlexNet state dict starts mrnet_cnn, a timm ViT checkpoint the ViT of its size)")
        if want == "alexnet" and cfg.data.img_size < 128:
            raise SbsslError(f"{self.path}: AlexNet's 11x11 first convolution needs data.img_size >= 128 "
                             f"(not {cfg.data.img_size})")
        if want == "vit" and cfg.model.stem != "patch":
            raise SbsslError(f"{self.path}: a timm ViT checkpoint has a patch stem; set model.stem=patch")
        return cfg

    def architecture(self, roi: str = "center") -> dict:
        return {}

    def load_into(self, encoder: torch.nn.Module) -> torch.nn.Module:
        sd = alexnet_to_cnn(self.weights, encoder) if self.kind == "alexnet" else vit_to_encoder(self.weights, encoder)
        try:
            encoder.load_state_dict(sd)
        except RuntimeError as e:
            raise SbsslError(f"{self.path}: weights do not fit the encoder ({str(e).splitlines()[0][:100]})") from None
        return encoder


def alexnet_to_cnn(sd: dict[str, torch.Tensor], cnn: torch.nn.Module) -> dict[str, torch.Tensor]:
    """torchvision AlexNet features -> MRNetCNN's state dict (convolutions, biases into the batch norms)."""
    from timm.models._manipulate import adapt_input_conv

    out = {k: v.clone() for k, v in cnn.state_dict().items()}
    convs = [i for i, m in enumerate(cnn.features) if isinstance(m, torch.nn.Conv2d)]
    for src, dst in zip(ALEXNET_CONVS, convs, strict=True):
        w = sd[f"features.{src}.weight"]
        out[f"features.{dst}.weight"] = adapt_input_conv(cnn.in_chans, w) if dst == convs[0] else w
        out[f"features.{dst + 1}.bias"] = sd[f"features.{src}.bias"]
    return out


def vit_to_encoder(sd: dict[str, torch.Tensor], vit: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm ViT checkpoint -> our encoder's state dict: grey patch embedding, positions on our grid, no head."""
    from timm.layers import resample_abs_pos_embed
    from timm.models._manipulate import adapt_input_conv

    own = vit.state_dict()
    out = {k: v for k, v in sd.items() if k in own}
    out["patch_embed.proj.weight"] = adapt_input_conv(vit.patch_embed.proj.in_channels, sd["patch_embed.proj.weight"])
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        out["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], list(vit.patch_embed.grid_size),
                                                  num_prefix_tokens=vit.num_prefix_tokens)
    return out


def imported_init(path: Path) -> ImportedWeights:
    """The weights file at `path`, if it is one this module can convert; one line naming the fault otherwise."""
    sd = read_state_dict(path)
    kind = kind_of(sd)
    if kind == "unknown":
        raise SbsslError(f"{path}: neither a GMML encoder, a torchvision AlexNet nor a timm ViT state dict")
    return ImportedWeights(sd, path, kind)
