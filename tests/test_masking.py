"""GMML corruption: area distribution, alignment, replacement values, mask == changed pixels."""

from __future__ import annotations

import pytest
import torch

from sbssl.augment import SliceAugment
from sbssl.masking import GroupMasking
from sbssl.utils.draw import Draw


@pytest.mark.parametrize("ratio,align", [(0.7, 1), (0.7, 8), (0.4, 1), (0.3, 4)])
def test_coverage_within_gmml_range(ratio: float, align: int):
    g = GroupMasking(max_ratio=ratio, align=align, replace=("noise",))
    torch.manual_seed(0)
    h = 64
    m = g.sample_mask(400, h, h, Draw("cpu"))
    cov = m.float().mean((1, 2, 3))
    lo = min(0.5, ratio)
    # the last rectangle may overshoot the target by at most one block (max_block of each side)
    block = (int(g.max_block * h / align) * align / h) ** 2
    assert cov.min() >= lo - 1e-6
    assert cov.max() <= ratio + block
    assert cov.mean() <= ratio + 0.05  # overshoot is rare, not systematic
    # the target is uniform over [lo, r]: coverage is spread, not stuck at one value
    assert cov.std() > (ratio - lo) / 6 or ratio == lo


def test_batched_search_equals_the_reference_rectangle_loop():
    """Same draws, consumed as the reference GMML code does: rectangles added in order until the target is met."""
    g, b, h = GroupMasking(max_ratio=0.7, align=1, replace=("noise",)), 24, 48
    mask = g.sample_mask(b, h, h, Draw("cpu", torch.Generator().manual_seed(5)))
    d, k, side = Draw("cpu", torch.Generator().manual_seed(5)), g._n_candidates(h, h), int(0.3 * h)
    target = (0.5 + 0.2 * d.rand(b)) * h * h
    rh, rw = d.randint(1, side + 1, b, k), d.randint(1, side + 1, b, k)
    r0, c0 = (d.rand(b, k) * h).long(), (d.rand(b, k) * h).long()
    for i in range(b):
        ref = torch.zeros(h, h, dtype=torch.bool)
        for j in range(k):
            ref[r0[i, j]: r0[i, j] + rh[i, j], c0[i, j]: c0[i, j] + rw[i, j]] = True
            if ref.sum() >= target[i]:
                break
        assert torch.equal(mask[i, 0], ref), i


def test_alignment_to_grid():
    g = GroupMasking(max_ratio=0.7, align=8)
    m = g.sample_mask(50, 64, 64, Draw("cpu"))[:, 0]
    blocks = m.view(50, 8, 8, 8, 8)  # each 8x8 cell fully in or out
    assert torch.all(blocks.amin((2, 4)) == blocks.amax((2, 4)))


def test_pixel_level_groups_are_not_grid_aligned():
    m = GroupMasking(max_ratio=0.7, align=1).sample_mask(20, 64, 64, Draw("cpu"))[:, 0]
    blocks = m.view(20, 8, 8, 8, 8)
    assert torch.any(blocks.amin((2, 4)) != blocks.amax((2, 4)))


@pytest.mark.parametrize("kind", ["zeros", "ones", "noise", "image"])
def test_replacement_values_and_mask_is_changed_pixels(kind: str):
    torch.manual_seed(1)
    x = torch.randn(16, 1, 32, 32)
    g = GroupMasking(max_ratio=0.7, align=1, replace=(kind,), ones_value=2.5)
    y, m = g(x, Draw("cpu"))
    assert torch.equal(y != x, m.expand_as(x))  # exactly the replaced pixels changed
    sel = m.expand_as(x)
    if kind == "zeros":
        assert torch.all(y[sel] == 0)
    elif kind == "ones":
        assert torch.all(y[sel] == 2.5)
    elif kind == "noise":
        v = y[sel]
        assert abs(v.mean()) < 0.05 and abs(v.std() - 1) < 0.05
    else:
        assert torch.equal(y[sel], x.roll(1, 0)[sel])


def test_mix_uses_every_type():
    x = torch.randn(200, 1, 16, 16) + 10.0  # far from every replacement value
    g = GroupMasking(max_ratio=0.7, replace=("zeros", "ones", "noise", "image"), ones_value=-5.0)
    y, m = g(x, Draw("cpu"))
    firsts = y[m.expand_as(y)].round()
    assert (firsts == 0).any() and (firsts == -5).any() and (firsts > 5).any()


def test_draws_for_a_shard_equal_the_global_batch_slice():
    """Two ranks drawing their halves reproduce one process drawing the whole batch."""
    x = torch.randn(8, 1, 32, 32)
    g = GroupMasking()
    full, mf = g(x, Draw("cpu", torch.Generator().manual_seed(5)))
    halves = [g(x[r * 4:(r + 1) * 4], Draw("cpu", torch.Generator().manual_seed(5), r, 2)) for r in (0, 1)]
    assert torch.equal(torch.cat([h[1] for h in halves]), mf)
    aug = SliceAugment()
    a = aug(x.sigmoid(), draw=Draw("cpu", torch.Generator().manual_seed(3)))
    b = torch.cat([aug(x[r * 4:(r + 1) * 4].sigmoid(), draw=Draw("cpu", torch.Generator().manual_seed(3), r, 2))
                   for r in (0, 1)])
    assert torch.allclose(a, b, atol=1e-6)


def test_augment_per_sample_and_per_group():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32).expand(6, 1, 32, 32).contiguous()
    y = SliceAugment()(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y[0], y[1])  # each sample draws its own transform
    g = SliceAugment()(x, groups=torch.tensor([3, 3]))
    assert torch.allclose(g[0], g[1]) and torch.allclose(g[3], g[5])  # one draw per exam
    assert not torch.allclose(g[0], g[3])
