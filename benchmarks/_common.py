"""Shared bits of the benchmark scripts: timing, machine description, RESULTS.md rows."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    bf16 = ("AMX" if torch.cpu._is_amx_tile_supported() else "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported()
            else "no fast bf16")
    return f"{platform.processor() or platform.machine()} {os.cpu_count()} cores ({bf16}), torch {torch.__version__}"


def timeit(fn, warmup: int = 2, repeats: int = 5, sync=None) -> float:
    """Median seconds of fn() after warm-up."""
    return timeit_interleaved([fn], warmup, repeats, sync)[0]


def timeit_interleaved(fns: list, warmup: int = 2, repeats: int = 5, sync=None) -> list[float]:
    """Median seconds of each fn, run in turn (ABAB...): a noisy shared CPU then slows all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            if sync:
                sync()
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def gmml_train_step(cfg, dev: torch.device, x_u8: torch.Tensor, bf16: bool, compile: bool = False):
    """One full GMML step as the engine runs it (augment + corrupt + encoder + decoder + masked L1 + AdamW),
    as a closure over a fresh model, for timing."""
    from sbssl.data.preprocessing import Preprocessing
    from sbssl.engine.tasks import GMMLTask
    from sbssl.models.build import build_gmml
    from sbssl.utils.draw import Draw

    gmml = build_gmml(cfg).to(dev)
    opt = torch.optim.AdamW(gmml.parameters(), lr=1e-4)
    task = GMMLTask(cfg, Preprocessing.from_config(cfg, 0.3, 0.25))
    fwd = torch.compile(gmml) if compile else gmml

    def model(x: torch.Tensor) -> torch.Tensor:  # autocast around the model only, as Fabric does
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            return fwd(x)

    def step() -> None:
        task(model, x_u8, Draw(dev)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.model = gmml
    return step


def record(name: str, result: dict, command: str, summary: str) -> None:
    """Write benchmarks/results/NAME.json and append a row to RESULTS.md."""
    result = {"benchmark": name, "machine": machine(), "date": _dt.date.today().isoformat(), "command": command,
              **result}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = HERE / "RESULTS.md"
    if not md.exists():
        md.write_text("# Benchmark results\n\n"
                      "| date | benchmark | machine | command | result |\n|---|---|---|---|---|\n")
    with open(md, "a") as f:
        f.write(f"| {result['date']} | {name} | {result['machine']} | `{command}` | {summary} |\n")
    print(json.dumps(result, indent=2))


def vit_flops(enc, n_tokens: int) -> float:
    """Forward FLOPs of the encoder: 2 per multiply-add of every linear layer + attention matmuls."""
    d, depth = enc.embed_dim, len(enc.blocks)
    per_block = 2 * n_tokens * (4 * d * d + 8 * d * d) + 2 * 2 * n_tokens * n_tokens * d
    patch = 2 * (n_tokens - 1) * d * enc.patch_embed.proj.weight[0].numel()
    return depth * per_block + patch


def matmul_rate(device, dtype=torch.bfloat16, n: int = 4096) -> float:
    """FLOP/s of a large square matrix product on this device: the roofline we compare against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    return 2 * n**3 / timeit(lambda: a @ b, 2, 5, sync)
