"""Images/s of a full GMML step vs a bare timm ViT forward+backward+AdamW step (same encoder, batch, precision).

GMML step = augment + corrupt + encoder (all blocks) + averaged skip blocks + light decoder + masked L1 + AdamW.
Bare step = the same timm encoder, forward_features + mean-token loss + backward + AdamW.
Target (the project's performance budget): GMML >= 0.85x bare.

    python benchmarks/pretrain_step.py [--model vit_small --img 256 --batch 16 --device cpu]
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import gmml_train_step, matmul_rate, record, timeit, timeit_interleaved, vit_flops  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.masking import GroupMasking  # noqa: E402
from sbssl.models.vit import create_encoder  # noqa: E402
from sbssl.utils.draw import Draw  # noqa: E402


def measure(a, cfg, dev, x_u8, prec: str, sync) -> dict:
    ac = {"device_type": dev.type, "dtype": torch.bfloat16, "enabled": prec == "bf16"}
    torch.manual_seed(0)
    gmml_step = gmml_train_step(cfg, dev, x_u8, prec == "bf16", a.compile)

    torch.manual_seed(0)
    enc = create_encoder(a.model, a.img, a.patch, 1, 0.1).to(dev)
    opt2 = torch.optim.AdamW(enc.parameters(), lr=1e-4)
    xb = torch.randn(a.batch, 1, a.img, a.img, device=dev)
    fenc = torch.compile(enc.forward_features) if a.compile else enc.forward_features

    def bare_step():
        with torch.autocast(**ac):
            y = fenc(xb)
        y.float().mean().backward()
        opt2.step()
        opt2.zero_grad(set_to_none=True)

    masking = GroupMasking.from_config(cfg.mask)
    big = torch.randn(max(a.batch, 64), 1, a.img, a.img, device=dev)
    t_mask = timeit(lambda: masking(big, Draw(dev)), 1, a.repeats, sync)
    t_g, t_b = timeit_interleaved([gmml_step, bare_step], 2, a.repeats, sync)
    # training FLOPs ~ 3x the encoder's forward; utilisation against the matmul rate measured here
    train_flops = 3 * vit_flops(enc, (a.img // a.patch) ** 2 + 1)
    peak = matmul_rate(dev, torch.bfloat16 if prec == "bf16" else torch.float32)
    return {"gmml_img_s": a.batch / t_g, "bare_img_s": a.batch / t_b, "ratio": t_b / t_g,
            "masking_img_s": big.shape[0] / t_mask, "matmul_tflops": peak / 1e12,
            "gmml_mfu": train_flops * a.batch / t_g / peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small")
    ap.add_argument("--img", type=int, default=256)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    cfg = load_config(None, [f"model.name={a.model}", f"data.img_size={a.img}", f"model.patch_size={a.patch}"])
    x_u8 = torch.randint(0, 256, (a.batch, 1, a.img, a.img), dtype=torch.uint8, device=dev)
    out = {"model": a.model, "img": a.img, "batch": a.batch, "device": a.device, "compile": a.compile}
    for prec in a.precisions.split(","):
        out[prec] = measure(a, cfg, dev, x_u8, prec, sync)
    summary = "; ".join(f"{p}: GMML {v['gmml_img_s']:.1f} vs bare {v['bare_img_s']:.1f} img/s = "
                        f"{v['ratio']:.2f}x, MFU {100 * v['gmml_mfu']:.0f}%, masking {v['masking_img_s']:.0f} img/s"
                        for p, v in out.items() if isinstance(v, dict))
    record("pretrain_step", out, "python " + " ".join(sys.argv), f"{a.model} {a.img}px b{a.batch}: {summary}")


if __name__ == "__main__":
    main()
