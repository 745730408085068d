"""Per-iteration schedules (DINO/GMML style): linear warmup then cosine, and the optimiser groups."""

from __future__ import annotations

import math

import torch.nn as nn


def cosine(step: int, total: int, start: float, end: float, warmup: int = 0, warmup_from: float = 0.0) -> float:
    """Linear warmup from warmup_from to start over `warmup` steps, then cosine to `end`."""
    if step < warmup:
        return warmup_from + (start - warmup_from) * step / max(warmup, 1)
    t = (step - warmup) / max(total - warmup, 1)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(t, 1.0)))


def param_groups(model: nn.Module, layer_decay: float = 1.0, n_layers: int = 0) -> list[dict]:
    """No weight decay on biases and norm weights (1-D params); optional layer-wise lr decay.

    With layer_decay < 1, parameters of encoder block i get lr * layer_decay**(n_layers - i),
    the embeddings get the smallest and the head the full rate (BEiT/MAE fine-tuning).
    """
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith(".bias"))
        scale = layer_decay ** (n_layers + 1 - _layer_id(name, n_layers)) if layer_decay < 1 else 1.0
        groups.setdefault((decay, scale), []).append(p)
    return [{"params": ps, "apply_wd": d, "lr_scale": s, "weight_decay": 0.0} for (d, s), ps in groups.items()]


def hold(groups: list[dict], held: nn.Module, steps: int) -> list[dict]:
    """`groups` with the parameters of `held` split off into groups held at lr 0 for `steps` optimiser steps."""
    if steps <= 0:
        return groups
    ids, out = {id(p) for p in held.parameters()}, []
    for g in groups:
        mine, rest = [p for p in g["params"] if id(p) in ids], [p for p in g["params"] if id(p) not in ids]
        out += [{**g, "params": mine, "hold_steps": steps}] if mine else []
        out += [{**g, "params": rest}] if rest else []
    return out


def _layer_id(name: str, n_layers: int) -> int:
    if any(k in name for k in ("cls_token", "pos_embed", "patch_embed", "reg_token")):
        return 0
    if ".blocks." in name or name.startswith("blocks."):
        after = name.split("blocks.", 1)[1]
        return int(after.split(".", 1)[0]) + 1
    return n_layers + 1


def apply_schedule(optimizer, lr: float, wd: float, step: int = 0) -> None:
    """Each group's lr and weight decay at this step; a group held until `hold_steps` keeps lr 0 (and, AdamW's
    decay being scaled by the lr, its weights exactly) until then."""
    for g in optimizer.param_groups:
        g["lr"] = 0.0 if step < g.get("hold_steps", 0) else lr * g.get("lr_scale", 1.0)
        g["weight_decay"] = wd if g.get("apply_wd", True) else 0.0
