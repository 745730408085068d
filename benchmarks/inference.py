"""Latency of one 32-slice exam through ViT-S at 256 px (batch 1 exam), fp32 and bf16, median of repeats,
and the achieved FLOP/s against this machine's matmul rate measured in the same run. Target: <= 0.6 s.

    python benchmarks/inference.py [--model vit_small --slices 32 --img 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record, timeit, vit_flops  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.engine.inference import build_classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small")
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--img", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    cfg = load_config(None, [f"model.name={a.model}", f"data.img_size={a.img}", f"finetune.slices={a.slices}"])
    model = build_classifier(cfg).to(dev).eval()
    x = torch.randn(a.slices, 1, a.img, a.img, device=dev)
    lengths = torch.tensor([a.slices], device=dev)
    flops = a.slices * vit_flops(model.encoder, (a.img // 16) ** 2 + 1)
    n = 4096 if dev.type == "cuda" else 2048
    out = {"model": a.model, "slices": a.slices, "img": a.img, "device": a.device, "gflop_per_exam": flops / 1e9}
    for prec, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m1, m2 = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
        t_mm = timeit(lambda m1=m1, m2=m2: m1 @ m2, 2, 5, sync)
        peak = 2 * n**3 / t_mm

        @torch.inference_mode()
        def run(prec=prec):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                model(x, lengths)

        t = timeit(run, 2, a.repeats, sync)
        out[prec] = {"latency_s": t, "achieved_tflops": flops / t / 1e12, "matmul_tflops": peak / 1e12,
                     "fraction_of_matmul_rate": flops / t / peak}
    summary = "; ".join(f"{p}: {out[p]['latency_s']:.3f} s/exam, {out[p]['achieved_tflops']:.2f} TFLOP/s = "
                        f"{100 * out[p]['fraction_of_matmul_rate']:.0f}% of matmul rate" for p in ("fp32", "bf16"))
    record("inference", out, "python " + " ".join(sys.argv), f"{a.model} {a.slices}x{a.img}px: {summary}")


if __name__ == "__main__":
    main()
