"""The encoder: a timm Vision Transformer, random init (nothing is ever downloaded)."""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

VIT_NAMES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
             "vit_base": "vit_base_patch16_224"}


def create_encoder(name: str = "vit_small", img_size: int = 256, patch_size: int = 16, in_chans: int = 1,
                   drop_path: float = 0.1) -> VisionTransformer:
    """A DINO/timm-style ViT (qkv bias, LayerNorm eps 1e-6, fused attention), no classifier head."""
    if name not in VIT_NAMES:
        raise ValueError(f"unknown ViT '{name}' (want one of {', '.join(VIT_NAMES)})")
    return timm.create_model(VIT_NAMES[name], pretrained=False, img_size=img_size, patch_size=patch_size,
                             in_chans=in_chans, num_classes=0, drop_path_rate=drop_path)


def encoder_meta(encoder: VisionTransformer, name: str) -> dict[str, str]:
    """What `timm.create_model` needs to rebuild the encoder (stored in safetensors metadata)."""
    return {"timm_name": VIT_NAMES[name], "name": name, "img_size": str(encoder.patch_embed.img_size[0]),
            "patch_size": str(encoder.patch_embed.patch_size[0]), "in_chans": str(encoder.patch_embed.proj.in_channels)}


def block_outputs(encoder: VisionTransformer, x: torch.Tensor, keep: list[int],
                  checkpointing: bool = False) -> list[torch.Tensor]:
    """Token outputs (B, 1 + N, D) of the blocks with 0-based indices in `keep`."""
    x = encoder.patch_embed(x)
    x = encoder._pos_embed(x)
    x = encoder.patch_drop(x)
    x = encoder.norm_pre(x)
    outs = []
    last = max(keep)
    for i, blk in enumerate(encoder.blocks[: last + 1]):
        if checkpointing and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
        if i in keep:
            outs.append(x)
    return outs


def cls_features(encoder: VisionTransformer, x: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
    """The final class token (B, D) of each slice: the per-slice feature of stage 2."""
    depth = len(encoder.blocks)
    (tokens,) = block_outputs(encoder, x, [depth - 1], checkpointing)
    return encoder.norm(tokens)[:, 0]
