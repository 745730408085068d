"""Latency of one 32-slice exam through ViT-S at 256 px (batch 1 exam), fp32, bf16 and bf16 compiled
(`sbssl predict --compile`: inductor with freezing), and the same classifier exported to ONNX and run by
onnxruntime on the CPU (`sbssl export`, `sbssl predict --runtime onnx`; fp32), median of repeats, and the
achieved FLOP/s against this machine's matmul rate measured in the same run. Targets: <= 0.6 s; onnxruntime
no slower than PyTorch eager fp32.

    python benchmarks/inference.py [--model vit_small --slices 32 --img 256] [--no-compile] [--no-onnx]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record, timeit, timeit_interleaved, vit_flops  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.engine.inference import compile_for_inference  # noqa: E402
from sbssl.models.build import build_classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small")
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--img", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-onnx", action="store_true")
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
    variants = [("fp32", torch.float32, model), ("bf16", torch.bfloat16, model)]
    if not a.no_compile:
        variants.append(("bf16_compiled", torch.bfloat16, compile_for_inference(model)))
    peaks = {}
    for dt in (torch.float32, torch.bfloat16):
        m1, m2 = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
        peaks[dt] = 2 * n**3 / timeit(lambda m1=m1, m2=m2: m1 @ m2, 2, 5, sync)
    runs, first = [], {}
    if not a.no_onnx and dev.type == "cpu":
        variants.append(("onnxruntime", torch.float32, onnx_session(model, x, lengths)))
    for name, dt, net in variants:

        @torch.no_grad()
        def run(net=net, bf16=dt == torch.bfloat16):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                net(x, lengths)

        t0 = time.perf_counter()
        run()  # compiles, for the compiled variant
        first[name] = time.perf_counter() - t0
        runs.append(run)
    # interleaved (ABCABC...): this shared CPU's speed drifts by tens of percent between minutes
    for (name, dt, _), t in zip(variants, timeit_interleaved(runs, 1, a.repeats, sync), strict=True):
        out[name] = {"latency_s": t, "first_call_s": first[name], "achieved_tflops": flops / t / 1e12,
                     "matmul_tflops": peaks[dt] / 1e12, "fraction_of_matmul_rate": flops / t / peaks[dt]}
    summary = "; ".join(f"{p}: {out[p]['latency_s']:.3f} s/exam, {out[p]['achieved_tflops']:.2f} TFLOP/s = "
                        f"{100 * out[p]['fraction_of_matmul_rate']:.0f}% of matmul rate"
                        for p, _, _ in variants)
    if not a.no_compile:
        summary += f" (compile {out['bf16_compiled']['first_call_s']:.0f} s once)"
    if "onnxruntime" in out:
        ratio = out["onnxruntime"]["latency_s"] / out["fp32"]["latency_s"]
        summary += f"; onnxruntime / PyTorch fp32 latency {ratio:.2f}"
    record("inference", out, "python " + " ".join(sys.argv), f"{a.model} {a.slices}x{a.img}px: {summary}")


def onnx_session(model, x: torch.Tensor, lengths: torch.Tensor):
    """The classifier as an ONNX graph (the TorchScript exporter and opset of `sbssl export`) in an onnxruntime
    CPU session, called as the PyTorch model is: net(x, lengths)."""
    import tempfile
    import warnings

    import onnxruntime as ort

    from sbssl.export import OPSET

    path = Path(tempfile.mkdtemp()) / "classifier.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, lengths), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["slices", "lengths"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    declared = [i.name for i in session.get_inputs()]  # the tracer may fold one exam's lengths into the graph

    def net(x: torch.Tensor, lengths: torch.Tensor):
        given = {"slices": x.numpy(), "lengths": lengths.numpy()}
        return session.run(None, {k: given[k] for k in declared})

    return net


if __name__ == "__main__":
    main()
