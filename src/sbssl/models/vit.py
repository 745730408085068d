"""The encoder: a timm Vision Transformer, random init (nothing is ever downloaded)."""

from __future__ import annotations

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from sbssl.registry import SLICE_FEATURES, STEMS, VITS


def create_encoder(name: str = "vit_small", img_size: int = 256, patch_size: int = 16, in_chans: int = 1,
                   drop_path: float = 0.1, stem: str = "patch", depth: int = 0) -> VisionTransformer:
    """A DINO/timm-style ViT (qkv bias, LayerNorm eps 1e-6, fused attention), no classifier head.

    stem="patch" is the paper's linear patchify; "conv" replaces it by a convolutional stem (see `conv_stem`).
    depth > 0 keeps the named width with that many blocks (timm's `depth`); 0 keeps the named depth.
    """
    if name not in VITS:
        raise ValueError(f"unknown ViT '{name}' (want one of {', '.join(VITS)})")
    if depth < 0:
        raise ValueError(f"model.depth must be >= 0, not {depth}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem '{stem}' (want one of {', '.join(STEMS)})")
    enc = timm.create_model(VITS[name], pretrained=False, img_size=img_size, patch_size=patch_size,
                            in_chans=in_chans, num_classes=0, drop_path_rate=drop_path,
                            **({"depth": depth} if depth else {}))
    if STEMS[stem] is not None:  # None: timm's linear patchify
        enc.patch_embed.proj = STEMS[stem](in_chans, enc.embed_dim, patch_size)
    return enc


def conv_stem(in_chans: int, dim: int, patch_size: int) -> nn.Sequential:
    """Stride-2 3x3 convolutions (BN + ReLU) down to one token per patch, then a 1x1 projection: the early
    convolutions of Xiao et al. 2021 ("Early convolutions help transformers see better"), which make ViTs
    train faster and more stably on little data. Output shape equals the patchify convolution's."""
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"a conv stem needs a power-of-two patch size >= 2, not {patch_size}")
    layers: list[nn.Module] = []
    c = in_chans
    for k in range(patch_size.bit_length() - 1):
        o = max(dim // 2 ** (patch_size.bit_length() - 2 - k) // 2, 16)
        layers += [nn.Conv2d(c, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
        c = o
    layers.append(nn.Conv2d(c, dim, 1))
    return nn.Sequential(*layers)


def stem_of(encoder: VisionTransformer) -> str:
    return "conv" if isinstance(encoder.patch_embed.proj, nn.Sequential) else "patch"


def in_chans_of(encoder: VisionTransformer) -> int:
    proj = encoder.patch_embed.proj
    return (proj[0] if isinstance(proj, nn.Sequential) else proj).in_channels


def block_outputs(encoder: VisionTransformer, x: torch.Tensor, keep: list[int]) -> list[torch.Tensor]:
    """Token outputs (B, 1 + N, D) of the blocks with 0-based indices in `keep` (timm's forward_intermediates;
    gradient checkpointing follows `encoder.set_grad_checkpointing`)."""
    patches, prefix = zip(*encoder.forward_intermediates(x, indices=keep, return_prefix_tokens=True,
                                                          stop_early=True, output_fmt="NLC",
                                                          intermediates_only=True), strict=True)
    return [torch.cat([c, t], 1) for c, t in zip(prefix, patches, strict=True)]


def set_slice_feature(encoder: VisionTransformer, kind: str = "cls") -> VisionTransformer:
    """Make `encoder(x)` return one feature (B, D) per slice from its final, normed tokens: the class token (the
    paper's), or the max or mean over the patch tokens (an aggregator that scores every token,
    slice_classifier.InstanceAggregator, takes them all instead). A tear fills one or two patch tokens of one or
    two slices; the max gives that token a direct path to the exam's logit (multiple-instance pooling within the
    slice, as the max over slices does across them), where the class token must first learn to attend to it.
    timm's pool after its final norm (its fc_norm stays off: it is chosen when the model is built)."""
    if kind not in SLICE_FEATURES:
        raise ValueError(f"unknown slice feature '{kind}' (want one of {', '.join(SLICE_FEATURES)})")
    encoder.reset_classifier(0, global_pool=SLICE_FEATURES[kind])
    return encoder
