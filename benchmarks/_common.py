"""Shared bits of the benchmark scripts: timing, machine description, dated runs and the RESULTS.md table."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
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


def record(name: str, result: dict, command: str, summary: str, benchmark: str | None = None) -> None:
    """Add a dated run to benchmarks/results/BENCHMARK.json (BENCHMARK: the script's name) and rewrite RESULTS.md,
    the current table. A rerun on the same day and machine replaces that day's run of the same name."""
    benchmark = benchmark or Path(sys.argv[0]).stem
    run = {"name": name, "date": _dt.date.today().isoformat(), "machine": machine(), "command": command,
           "summary": summary, **result}
    path = HERE / "results" / f"{benchmark}.json"
    path.parent.mkdir(exist_ok=True)
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    runs = [r for r in runs if (r["name"], r["date"], r["machine"]) != (name, run["date"], run["machine"])]
    path.write_text(json.dumps({"benchmark": benchmark, "runs": [*runs, run]}, indent=1) + "\n")
    write_results_table()
    print(json.dumps(run, indent=2))


def _device_kind(machine_name: str) -> str:
    return "gpu" if any(k in machine_name for k in ("NVIDIA", "H100", "H200", "A100")) else "cpu"


def write_results_table() -> Path:
    """RESULTS.md: the newest run of each benchmark's named measurement, per device kind (CPU, GPU); every dated
    run stays in results/BENCHMARK.json."""
    rows = []
    for path in sorted((HERE / "results").glob("*.json")):
        latest: dict[tuple[str, str], dict] = {}
        for r in json.loads(path.read_text())["runs"]:
            latest[(r["name"], _device_kind(r["machine"]))] = r  # runs are kept in date order
        rows += [(path.stem, r) for _, r in sorted(latest.items())]
    lines = ["# Benchmark results: the current table", "",
             "The newest run of each measurement (per benchmark script, name and device kind). Every dated run, "
             "with its raw numbers, is in `results/BENCHMARK.json` (`runs`, oldest first); GPU runs' raw files are "
             "in `results/gpu/`. Paths are placeholders: DATA, WORK, ENCODER.", "",
             "| benchmark | name | date | machine | command | result |", "|---|---|---|---|---|---|"]
    lines += [f"| {b} | {r['name']} | {r['date']} | {r['machine']} | `{r['command']}` | {r['summary']} |"
              for b, r in rows]
    out = HERE / "RESULTS.md"
    out.write_text("\n".join(lines) + "\n")
    return out


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
