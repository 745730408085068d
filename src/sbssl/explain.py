"""Explanations (paper Fig. 5): where in each slice the model looked, and which slices weighed most; `sbssl explain`.

ViT: the attention of the class token to the patch tokens in one block (10 of 12 by default, the
same relative depth in a shallower encoder), averaged over heads and normalised to sum to 1,
is upsampled to the slice and overlaid in colour. Fused attention never materialises the
attention matrix, so only the block being read switches to the explicit path, and only
while explaining.

CNN (which has no attention): Grad-CAM (Selvaraju et al. 2017) of the exam's logit on the last convolutional
feature map, per read slice, through Captum's `LayerGradCam` (chosen over the `grad-cam` package: pure Python,
kept by the PyTorch team, and no OpenCV dependency). The exam's features are a max over slices, so a slice that
wins no feature's max gets no gradient and an empty map: the maps show what drove the decision.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from sbssl.data.preprocessing import Preprocessing
from sbssl.models.gmml import skip_indices
from sbssl.models.slice_classifier import SliceClassifier


@contextmanager
def _explicit_attention(block):
    attn = block.attn
    saved = attn.fused_attn
    attn.fused_attn = False
    captured: dict[str, torch.Tensor] = {}
    handle = attn.attn_drop.register_forward_hook(lambda m, a, out: captured.__setitem__("attn", out.detach()))
    try:
        yield captured
    finally:
        handle.remove()
        attn.fused_attn = saved


def attention_block(block: int, depth: int, reference_depth: int = 12) -> int:
    """0-based index of the block read for `block` (1-indexed, of a 12-block ViT, clamped to it): the same
    relative depth, as the decoder's skip blocks (`gmml.skip_indices`)."""
    return skip_indices([min(max(block, 1), reference_depth)], depth, reference_depth)[0]


@torch.no_grad()
def cls_attention(encoder: VisionTransformer, x: torch.Tensor, block: int = 10) -> torch.Tensor:
    """(B, H, W) maps: class-token attention of `block` (1-indexed, see `attention_block`), head-averaged, sum 1,
    slice-sized."""
    b = attention_block(block, len(encoder.blocks))
    with _explicit_attention(encoder.blocks[b]) as cap:
        encoder.forward_features(x)
    attn = cap["attn"].float()  # (B, heads, 1 + N, 1 + N)
    p = encoder.num_prefix_tokens
    gh, gw = encoder.patch_embed.grid_size
    cls = attn[:, :, 0, p:].mean(1).reshape(-1, 1, gh, gw)
    cls = cls / cls.sum((2, 3), keepdim=True).clamp(min=1e-12)
    up = F.interpolate(cls, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return up / up.sum((1, 2), keepdim=True).clamp(min=1e-12)


def grad_cam(model: SliceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(n, H, W) Grad-CAM maps of one exam's logit (positive minus negative) on the CNN encoder's last feature map
    (`encoder.features`), one per read slice, each summing to 1 (0 where nothing drove the logit)."""
    from captum.attr import LayerAttribution, LayerGradCam

    def exam_logit(slices: torch.Tensor) -> torch.Tensor:
        logits = model(slices, lengths).float()
        return logits[:, 1] - logits[:, 0]

    with torch.enable_grad():
        cam = LayerGradCam(exam_logit, model.encoder.features).attribute(x, relu_attributions=True)
    up = LayerAttribution.interpolate(cam.detach().float(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    up = up[:, 0].clamp(min=0)
    return up / up.sum((1, 2), keepdim=True).clamp(min=1e-12)


def saliency(model: SliceClassifier, x: torch.Tensor, lengths: torch.Tensor, block: int = 10
             ) -> tuple[torch.Tensor, str]:
    """Per read slice, where the model looked: class-token attention for a ViT, Grad-CAM for a CNN."""
    if isinstance(model.encoder, VisionTransformer):
        return cls_attention(model.encoder, x, block), f"class-token attention, block {block}"
    if hasattr(model.encoder, "features"):
        return grad_cam(model, x, lengths), "Grad-CAM, last conv block"
    raise TypeError(f"no explanation for a {type(model.encoder).__name__} encoder")


@torch.no_grad()
def slice_importance(model: SliceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
    """Per exam, how much each (read) slice weighed in the decision.

    attention and instance aggregators: their slice weights; concat/max/mean: occlusion, the drop
    in P(positive) when one slice's feature is replaced by the exam's mean feature.
    """
    feats = model.slice_features(x).float()
    _, w = model.aggregate(feats, lengths)
    if w is not None:
        return [w[i, : n].cpu().numpy() for i, n in enumerate(lengths.tolist())]
    out = []
    for fe in feats.split(lengths.tolist()):
        n = fe.shape[0]
        variants = fe[None].repeat(n + 1, *[1] * fe.ndim)
        variants[torch.arange(1, n + 1), torch.arange(n)] = fe.mean(0)
        lens = torch.full((n + 1,), n)
        pooled, _ = model.aggregate(variants.reshape(-1, *fe.shape[1:]), lens)
        prob = model.head(pooled).softmax(1)[:, 1]
        drop = (prob[0] - prob[1:]).abs()
        out.append((drop / drop.sum().clamp(min=1e-12)).cpu().numpy())
    return out


def overlay_png(path: Path, slices: np.ndarray, maps: np.ndarray, weights: np.ndarray, indices: list[int],
                title: str, n_total: int) -> None:
    """Chosen slices with their saliency (attention or Grad-CAM) overlaid, and a bar chart of slice weights."""
    from sbssl.utils.plotting import pyplot, save_png

    plt = pyplot()

    k = len(indices)
    fig = plt.figure(figsize=(2.3 * k + 2.6, 2.8))
    gs = fig.add_gridspec(1, k + 1, width_ratios=[1] * k + [1.1])
    for j, i in enumerate(indices):
        ax = fig.add_subplot(gs[0, j])
        ax.imshow(slices[i], cmap="gray")
        m = maps[i] / max(maps[i].max(), 1e-12)
        ax.imshow(m, cmap="jet", alpha=0.45 * (m > 0.05), vmin=0, vmax=1)
        ax.set_title(f"slice {i} (w {weights[i]:.2f})", fontsize=7)
        ax.axis("off")
    ax = fig.add_subplot(gs[0, k])
    ax.bar(np.arange(len(weights)), weights, color="#4477aa")
    ax.set_title("slice weight", fontsize=7)
    ax.set_xlabel(f"read slice (of {n_total})", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)

    save_png(fig, path, dpi=80)


def explain_exam(model: SliceClassifier, x_u8: torch.Tensor, lengths: torch.Tensor, pre: Preprocessing, block: int,
                 path: Path, title: str, n_total: int, device="cpu") -> dict:
    """Saliency overlay PNG for one exam (x_u8: the slices the model reads)."""
    x = pre.normalise(x_u8.to(device))
    weights = slice_importance(model, x, lengths.to(device))[0]
    maps, kind = saliency(model, x, lengths.to(device), block)
    maps = maps.cpu().numpy()
    mid = len(weights) // 2
    top = [int(i) for i in np.argsort(-weights)[:2] if int(i) != mid]
    indices = [mid, *top][:3]
    overlay_png(path, x_u8[:, 0].numpy(), maps, weights, indices, f"{title}\n{kind}", n_total)
    return {"weights": weights.tolist(), "shown": indices, "maps": maps, "kind": kind}


def explain(model_dir: Path, root: Path, out: Path, split: str = "valid", n: int = 6, block: int = 10,
            device: str = "cpu") -> list[Path]:
    """Overlays for n exams of a split: the most and the least suspicious by the ensemble."""
    from sbssl.data.cache import slice_cache_for
    from sbssl.data.datasets import gather_exams
    from sbssl.engine.inference import load_ensemble

    ens = load_ensemble(model_dir, device)
    cache, records = slice_cache_for(ens.cfg, Path(root), split)
    p = ens.member_probs(cache, np.arange(len(records))).mean(0)  # as `predict` and `evaluate` score
    order = np.argsort(-p, kind="stable")
    chosen = list(dict.fromkeys([*order[: (n + 1) // 2].tolist(), *order[::-1][: n // 2].tolist()]))[:n]
    paths = []
    for e in chosen:
        x, lengths = gather_exams(cache, np.array([e]), ens.models[0].slices)
        r = records[e]
        path = Path(out) / f"{split}-{r.case}.png"
        explain_exam(ens.models[0], x, lengths, ens.pre, block, path,
                     f"case {r.case} (label {r.label}): P({ens.cfg.data.task}) = {p[e]:.3f}",
                     int(cache.offsets[e + 1] - cache.offsets[e]), device)
        paths.append(path)
    return paths
