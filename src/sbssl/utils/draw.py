"""Random draws for one rank's share of a global batch.

Every rank draws the numbers of the whole global batch from the same generator and
keeps its own slice, so N processes with batch B see exactly the randomness that one
process with batch N*B would: distributed runs reproduce single-process runs.
Only per-sample parameters are drawn this way (cheap); images are processed per rank.
"""

from __future__ import annotations

import torch


class Draw:
    def __init__(self, device: torch.device | str, generator: torch.Generator | None = None,
                 rank: int = 0, world: int = 1):
        self.device, self.generator, self.rank, self.world = torch.device(device), generator, rank, world

    def _mine(self, t: torch.Tensor, n: int) -> torch.Tensor:
        return t[self.rank * n: (self.rank + 1) * n] if self.world > 1 else t

    def rand(self, n: int, *shape: int) -> torch.Tensor:
        t = torch.rand(n * self.world, *shape, device=self.device, generator=self.generator)
        return self._mine(t, n)

    def randn(self, n: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        t = torch.randn(n * self.world, *shape, device=self.device, generator=self.generator, dtype=dtype)
        return self._mine(t, n)

    def randint(self, low: int, high: int, n: int, *shape: int) -> torch.Tensor:
        t = torch.randint(low, high, (n * self.world, *shape), device=self.device, generator=self.generator)
        return self._mine(t, n)
