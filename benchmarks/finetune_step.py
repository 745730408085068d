"""Exams/s of a slice-based fine-tuning step (ViT-S, concat over 32 slices, 8 exams per step) and of
exam inference, in bf16 where supported.

    python benchmarks/finetune_step.py [--model vit_small --img 256 --slices 32 --exams 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record, timeit  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.models.build import build_classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small")
    ap.add_argument("--img", type=int, default=256)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--exams", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    cfg = load_config(None, [f"model.name={a.model}", f"data.img_size={a.img}", f"finetune.slices={a.slices}"])
    model = build_classifier(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.randn(a.exams * a.slices, 1, a.img, a.img, device=dev)
    lengths = torch.full((a.exams,), a.slices, device=dev)
    y = torch.randint(0, 2, (a.exams,), device=dev)

    def train_step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x, lengths).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def infer():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            model(x, lengths)

    t_train, t_inf = timeit(train_step, 2, 5, sync), timeit(infer, 2, 5, sync)
    out = {"model": a.model, "img": a.img, "slices": a.slices, "exams_per_step": a.exams, "device": a.device,
           "train_exams_s": a.exams / t_train, "infer_exams_s": a.exams / t_inf}
    record("finetune_step", out, "python " + " ".join(sys.argv),
           f"{a.model} {a.slices}x{a.img}px: train {out['train_exams_s']:.1f} exams/s, "
           f"inference {out['infer_exams_s']:.1f} exams/s")


if __name__ == "__main__":
    main()
