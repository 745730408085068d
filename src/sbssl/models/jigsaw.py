"""The jigsaw network of reference [20] (Noroozi and Favaro's context-free network): the classifier's CNN as a
trunk shared by the nine tiles, their features concatenated in puzzle order, two fully connected layers naming
the permutation. Only the trunk is kept (`encoder`): it starts the CNN classifier as GMML's encoder does."""

from __future__ import annotations

import torch
import torch.nn as nn


class JigsawNet(nn.Module):
    def __init__(self, encoder: nn.Module, permutations: int, tiles: int = 9, hidden: int = 512):
        super().__init__()
        self.encoder = encoder  # (N, C, t, t) -> (N, K): the CNN built for the full slice size, run on tiles
        self.head = nn.Sequential(nn.Linear(tiles * encoder.embed_dim, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, permutations))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles (B, 9, C, t, t) in puzzle order -> permutation logits (B, permutations)."""
        b, n = tiles.shape[:2]
        feats = self.encoder(tiles.flatten(0, 1))
        return self.head(feats.view(b, n * feats.shape[1]))
