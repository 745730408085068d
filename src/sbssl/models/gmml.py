"""The GMML autoencoder of stage 1: ViT encoder, averaged skip blocks, light decoder."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from sbssl.models.vit import block_outputs, in_chans_of


def skip_indices(blocks_1idx: list[int], depth: int, reference_depth: int = 12) -> list[int]:
    """The paper's blocks {6, 8, 10, 12} of 12, moved to the same relative depth for other depths."""
    out = sorted({max(0, round(b * depth / reference_depth) - 1) for b in blocks_1idx})
    if any(not 0 <= i < depth for i in out):
        raise ValueError(f"skip blocks {blocks_1idx} outside a depth-{depth} encoder")
    return out


class ReconstructionHead(nn.Module):
    """Two point-wise layers with GELU, then a transposed conv (kernel = stride = patch) to pixels.

    A transposed convolution whose kernel equals its stride maps each token to its own
    p x p patch, so it is computed as one Linear to p*p*C values per token and an
    unpatchify: the same function, one matmul instead of a strided deconvolution.
    """

    def __init__(self, dim: int, patch_size: int, in_chans: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or dim
        self.p, self.c = patch_size, in_chans
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.to_pixels = nn.Linear(hidden, patch_size * patch_size * in_chans)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, _ = tokens.shape
        gh, gw = grid
        y = self.to_pixels(self.mlp(tokens))  # (B, N, p*p*C)
        y = y.view(b, gh, gw, self.p, self.p, self.c).permute(0, 5, 1, 3, 2, 4)
        return y.reshape(b, self.c, gh * self.p, gw * self.p)


class GMMLAutoencoder(nn.Module):
    """x_hat = D(mean_{i in B} E_i(x_corrupted)) with B the skip blocks (paper section 3.2)."""

    def __init__(self, encoder: VisionTransformer, skip_blocks: list[int] = (6, 8, 10, 12),
                 decoder_dim: int = 0, checkpointing: bool = False):
        super().__init__()
        self.encoder = encoder
        self.skip = skip_indices(list(skip_blocks), len(encoder.blocks))
        pe = encoder.patch_embed
        self.grid = pe.grid_size
        self.head = ReconstructionHead(encoder.embed_dim, pe.patch_size[0], in_chans_of(encoder), decoder_dim)
        encoder.set_grad_checkpointing(checkpointing)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: the corrupted slices; `mask` is unused (the paper's encoder sees the corruption as it is)."""
        outs = block_outputs(self.encoder, x, self.skip)
        tokens = self.encoder.norm(torch.stack(outs).mean(0))
        return self.head(tokens[:, self.encoder.num_prefix_tokens:], self.grid)


def patch_statistics(x: torch.Tensor, p: int, eps: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Each p x p patch's mean and std, broadcast back to its pixels (MAE's norm_pix_loss target: a patch
    standardised by its own statistics, so a faint structure weighs as much as a bright edge). `eps` is added
    to the variance in the slice set's standardised units (MAE's 1e-6 is for photographs): a patch of background
    noise is not magnified more than ~10x into a target nothing can predict."""
    mean = F.avg_pool2d(x, p)
    std = (F.avg_pool2d(x * x, p) - mean * mean).clamp(min=0).add(eps).sqrt()
    return F.interpolate(mean, scale_factor=p, mode="nearest"), F.interpolate(std, scale_factor=p, mode="nearest")


def masked_l1(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              count: torch.Tensor | None = None) -> torch.Tensor:
    """Paper eq. 2: L1 over the corrupted pixels only, averaged over them (or over `count` of them)."""
    m = mask.to(recon.dtype).expand_as(recon)
    return ((recon - target).abs() * m).sum() / (m.sum() if count is None else count).clamp(min=1.0)


class MaskedL1Loss(nn.Module):
    """`masked_l1` as a module, for a training loop of one's own: `loss(recon, target, mask)`."""

    def forward(self, recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_l1(recon, target, mask)
