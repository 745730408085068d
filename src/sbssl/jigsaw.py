"""The jigsaw puzzle pretext task of Noroozi and Favaro (ECCV 2016), as reference [20] of the paper (Manna et al.,
Pattern Recognition Letters 2022) applied it to MRNet slices: cut a slice into a 3 x 3 grid of tiles with gaps,
shuffle them by one of a fixed set of permutations, and have the network name the permutation.

- The permutation set: `permutations` of the 9! orders, chosen greedily for maximal minimum Hamming distance
  (Noroozi and Favaro's algorithm: each new one the farthest from all chosen so far), so that no two puzzles are
  nearly the same. 100 by default: the authors found transfer to improve with set size up to 1,000 on ImageNet,
  but with 9-pixel tiles of a 32 px slice (the CPU recipe) a finer distinction than 100 classes is more than the
  tiles hold; the paper scale's recipe takes 1,000.
- Gaps and jitter: each tile is a random `tile` x `tile` crop inside its grid cell (cell minus `gap` pixels), so
  the network cannot solve the puzzle by matching edges and must use what the tiles show.
- "[20] + noise" (the paper's Table 1 row): the reference's text is not available here; we add N(0, noise^2) to
  every tile (standardised units), independently per tile, which removes low-level continuity cues further.

Everything is batched on the training device; the random draws come from the step's `Draw`, as GMML's masks do.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from sbssl.utils.draw import Draw

GRID = 3


@lru_cache(maxsize=8)
def permutation_set(n: int, seed: int = 0) -> np.ndarray:
    """(n, 9) permutations of the 9 tiles with maximal minimum Hamming distance, chosen greedily (deterministic)."""
    if not 2 <= n <= 5000:
        raise ValueError(f"jigsaw.permutations={n}: want 2..5000")
    every = np.array(list(itertools.permutations(range(GRID * GRID))), dtype=np.int8)  # (362880, 9)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(every)))]
    nearest = (every != every[chosen[0]]).sum(1)  # each candidate's distance to the closest chosen one
    for _ in range(n - 1):
        i = int(np.argmax(nearest))
        chosen.append(i)
        np.minimum(nearest, (every != every[i]).sum(1), out=nearest)
    return every[chosen].astype(np.int64)


@dataclass
class JigsawPuzzle:
    """Cuts (B, C, H, W) slices into shuffled 3 x 3 puzzles: `(tiles (B, 9, C, t, t), permutation index (B,))`."""

    permutations: int = 100
    gap: int = 1  # pixels between tiles (each cell is H // 3; a tile is cell - gap)
    noise: float = 0.0  # std of Gaussian noise added to every tile ("[20] + noise")

    def tile_size(self, size: int) -> int:
        t = size // GRID - self.gap
        if t < 3:
            raise ValueError(f"a {size} px slice leaves {t} px tiles with a {self.gap} px gap: want >= 3")
        return t

    def __call__(self, x: torch.Tensor, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        cell, t = min(h, w) // GRID, self.tile_size(min(h, w))
        perms = torch.from_numpy(permutation_set(self.permutations)).to(x.device)
        label = draw.randint(0, self.permutations, b)
        # per tile, its cell's corner plus a random offset in [0, cell - t]
        grid = torch.arange(GRID, device=x.device) * cell
        r0 = grid.repeat_interleave(GRID)[None] + draw.randint(0, cell - t + 1, b, GRID * GRID)
        c0 = grid.repeat(GRID)[None] + draw.randint(0, cell - t + 1, b, GRID * GRID)
        ar = torch.arange(t, device=x.device)
        rows = (r0[..., None] + ar)[..., :, None].expand(b, GRID * GRID, t, t)
        cols = (c0[..., None] + ar)[..., None, :].expand(b, GRID * GRID, t, t)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        tiles = x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 1, 4, 2, 3)  # (B, 9, C, t, t)
        order = perms[label]  # (B, 9): position k shows tile order[k]
        tiles = tiles[torch.arange(b, device=x.device)[:, None], order]
        if self.noise > 0:
            tiles = tiles + self.noise * draw.randn(*tiles.shape).to(tiles.dtype)
        return tiles, label
