"""How GMML pretraining time and memory grow with model size, image size and slice count,
and what one epoch over MRNet's ~30k sagittal training slices costs here.

    python benchmarks/scaling.py [--models vit_tiny,vit_small,vit_base] [--sizes 64,128,256] [--batch 16]
                                 [--exams 20,40,80] [--mrnet-slices 30000]

Model x image size: one full GMML step (augment + corrupt + encoder + decoder + masked L1 +
AdamW, bf16 where supported) in a fresh process per configuration, so that its peak memory
(CPU: max RSS; GPU: max allocated) is its own. Slice count: one real `sbssl pretrain` epoch
(ViT-T, 64 px) on synthetic sets of growing size, cache and data loader included.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gmml_train_step, record, timeit  # noqa: E402


def one(model: str, img: int, batch: int, device: str, repeats: int) -> dict:
    """Step time and peak memory of one configuration (run in its own process)."""
    from sbssl.config import load_config
    from sbssl.engine.runtime import inference_bf16

    dev = torch.device(device)
    bf16 = inference_bf16(dev)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = load_config(None, [f"model.name={model}", f"data.img_size={img}"])
    x_u8 = torch.randint(0, 256, (batch, 1, img, img), dtype=torch.uint8, device=dev)
    step = gmml_train_step(cfg, dev, x_u8, bf16)
    gmml = step.model

    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    t = timeit(step, 1, repeats, sync)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0)
    return {"model": model, "img": img, "batch": batch, "bf16": bf16, "params_m": sum(
        p.numel() for p in gmml.parameters()) / 1e6, "step_s": t, "img_per_s": batch / t, "peak_mib": peak}


def slice_scaling(exams: list[int], workdir: Path) -> list[dict]:
    """One real pretraining epoch (ViT-T, 64 px, batch 32) on synthetic sets of growing size."""
    from sbssl.synth import SynthSpec, generate

    rows = []
    for n in exams:
        data = workdir / f"synth{n}"
        generate(data, SynthSpec(n, 4, 64, seed=5, workers=2))
        out = workdir / f"run{n}"
        res = subprocess.run([sys.executable, "-m", "sbssl.cli", "pretrain", "--data", str(data), "--out", str(out),
                              "--config", "pretrain/demo", "train.epochs=1", "train.batch_size=32",
                              "train.recon_every=0", "train.warmup_epochs=0"], capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr[-2000:])
        rec = json.loads((out / "log.jsonl").read_text().splitlines()[0])
        slices = rec["step"] * 32
        rows.append({"exams": n, "slices": slices, "epoch_s": rec["seconds"], "img_per_s": rec["img_per_s"]})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit_tiny,vit_small,vit_base")
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--exams", default="20,40,80", help="synthetic set sizes for the slice-count series ('' = skip)")
    ap.add_argument("--mrnet-slices", type=int, default=30000, help="MRNet's sagittal training slices")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "IMG"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.batch, a.device, a.repeats)))
        return
    grid = []
    for model in a.models.split(","):
        for img in map(int, a.sizes.split(",")):
            res = subprocess.run([sys.executable, __file__, "--one", model, str(img), "--batch", str(a.batch),
                                  "--repeats", str(a.repeats), "--device", a.device],
                                 capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(res.stderr[-2000:])
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["mrnet_epoch_min"] = a.mrnet_slices / row["img_per_s"] / 60
            grid.append(row)
            print(row, flush=True)
    slices = []
    if a.exams:
        with tempfile.TemporaryDirectory() as tmp:
            slices = slice_scaling([int(v) for v in a.exams.split(",")], Path(tmp))
    out = {"device": a.device, "grid": grid, "slices": slices, "mrnet_slices": a.mrnet_slices}
    cells = [f"{r['model'].removeprefix('vit_')}@{r['img']}: {r['img_per_s']:.1f} img/s, {r['peak_mib']:.0f} MiB, "
             f"MRNet epoch {r['mrnet_epoch_min']:.0f} min" for r in grid]
    if slices:
        cells.append("epoch vs slices (ViT-T 64px): " + ", ".join(f"{r['slices']}: {r['epoch_s']:.0f}s"
                                                                   for r in slices))
    record("scaling", out, "python " + " ".join(sys.argv), "; ".join(cells))


if __name__ == "__main__":
    main()
