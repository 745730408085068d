"""Slices/s of the input pipeline (cache read + augment + GMML corruption) on ONE core, against
(a) the model's pretraining throughput on the same machine (target >= 3x) and
(b) a straightforward per-sample Python version of the reference GMML masking (rectangles placed
    in a loop until the target area is covered, as GMML's public code does; src/sbssl/masking.py).

    python benchmarks/input_pipeline.py --data SYNTH_ROOT [--img 256 --batch 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, record, timeit  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.data.cache import slice_cache_for  # noqa: E402
from sbssl.data.datasets import SliceDataset  # noqa: E402
from sbssl.data.preprocessing import Preprocessing  # noqa: E402
from sbssl.engine.tasks import GMMLTask  # noqa: E402
from sbssl.utils.draw import Draw  # noqa: E402


def reference_masking(x: np.ndarray, max_ratio: float = 0.7, align: int = 1, max_block: float = 0.3,
                      rng=np.random) -> tuple[np.ndarray, np.ndarray]:
    """The reference algorithm, per sample in Python: rectangles until the target is covered, noise inside."""
    out, masks = x.copy(), np.zeros(x.shape, bool)
    for i in range(x.shape[0]):
        _, h, w = x[i].shape
        target = rng.uniform(min(0.5, max_ratio), max_ratio) * h * w
        m = np.zeros((h, w), bool)
        while m.sum() < target:
            bh = rng.randint(1, int(max_block * h / align) + 1) * align
            bw = rng.randint(1, int(max_block * w / align) + 1) * align
            r = rng.randint(0, h // align) * align
            c = rng.randint(0, w // align) * align
            m[r: r + bh, c: c + bw] = True
        out[i][:, m] = rng.standard_normal((x.shape[1], int(m.sum())))
        masks[i] = m
    return out, masks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--img", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model", default="vit_small")
    a = ap.parse_args()
    torch.set_num_threads(1)  # one core
    cfg = load_config(None, [f"data.img_size={a.img}", f"model.name={a.model}"])
    cache, _ = slice_cache_for(cfg, Path(a.data), "train", labelled=False)
    ds = SliceDataset(cache)
    step = GMMLTask(cfg, Preprocessing.from_config(cfg, cache.mean, cache.std))
    rng = np.random.default_rng(0)

    def pipeline():
        idx = rng.choice(len(ds), a.batch, replace=False)
        step.inputs(ds[idx.tolist()], Draw("cpu"))

    t_pipe = timeit(pipeline, 2, 5)
    xs = np.random.default_rng(0).standard_normal((a.batch, 1, a.img, a.img)).astype(np.float32)
    t_ref = timeit(lambda: reference_masking(xs, rng=np.random.RandomState(0)), 1, 3)
    from sbssl.masking import GroupMasking

    gm = GroupMasking.from_config(cfg.mask)
    xt = torch.from_numpy(xs)
    t_ours = timeit(lambda: gm(xt, Draw("cpu")), 2, 5)
    model_ips = None
    ps = HERE / "results" / "pretrain_step.json"
    if ps.exists():
        r = json.loads(ps.read_text())["runs"][-1]  # the newest pretrain_step run
        if r.get("img") == a.img and r.get("device") == "cpu":
            model_ips = max(v["gmml_img_s"] for v in r.values() if isinstance(v, dict) and "gmml_img_s" in v)
    out = {"img": a.img, "batch": a.batch, "pipeline_slices_s_1core": a.batch / t_pipe,
           "masking_ours_img_s_1core": a.batch / t_ours, "masking_reference_loop_img_s": a.batch / t_ref,
           "masking_speedup": t_ref / t_ours, "model_pretrain_img_s_2cores": model_ips,
           "pipeline_over_model": (a.batch / t_pipe) / model_ips if model_ips else None}
    summary = (f"{a.img}px: pipeline {out['pipeline_slices_s_1core']:.0f} slices/s on 1 core"
               + (f" = {out['pipeline_over_model']:.1f}x the model's {model_ips:.1f} img/s" if model_ips else "")
               + f"; masking {out['masking_ours_img_s_1core']:.0f} vs reference loop "
                 f"{out['masking_reference_loop_img_s']:.0f} img/s ({out['masking_speedup']:.1f}x)")
    record("input_pipeline", out, "python " + " ".join(sys.argv), summary)


if __name__ == "__main__":
    main()
