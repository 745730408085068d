"""`sbssl demo`: the whole SB-SSL pipeline on the embedded synthetic set, CPU-sized.

synth -> check -> GMML pretrain (short, to show the stage) -> fine-tune from the shipped GMML encoder
(`init=builtin:cpu`, the same recipe run for 44 epochs on 1,130 other synthetic knees) and from scratch
(+ the CNN baseline) -> evaluate -> compare -> explain -> report.html. Each step is the library call behind a
CLI command; `commands.txt` lists those commands so that every number in the report can be reproduced by hand.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sbssl.config import load_config
from sbssl.utils.rundir import ENCODER, METRICS

log = logging.getLogger("sbssl")


@dataclass(frozen=True)
class DemoSize:
    train: int
    valid: int
    size: int
    pretrain: list[str]
    finetune: list[str]
    cnn: bool


# The demo's GMML arm runs two members sharing one held-out fifth (the recipe before finetune/demo's five, each
# holding out its own: 2.5x the time), within its 10-minute budget; the baselines set their own one member.
FULL = DemoSize(200, 120, 64, [], ["finetune.ensemble=2", "finetune.holdout=shared"], cnn=True)
# The demo's fine-tuning arms (overrides of finetune/demo): the shipped recipes, which benchmarks/transfer.py
# runs unchanged on other families. Random init has no features worth probing and needs a larger lr (finetune/cpu's).
SCRATCH = ["init=scratch", "finetune.ensemble=1", "finetune.holdout=shared", "finetune.probe_steps=0"]
# The CNN's recipe re-estimates and trains its batch norms (in every layer) as chosen, also from a GMML CNN encoder.
ARMS = {"gmml": ["init=builtin:cpu"], "scratch": [*SCRATCH, "train.lr=1.6e-2"],
        "cnn": [*SCRATCH, "model.name=mrnet_cnn", "train.lr=3.2e-2", "finetune.recalibrate_bn=true",
                "finetune.frozen_bn=false"]}
QUICK = DemoSize(32, 32, 64, ["train.epochs=1", "train.batch_size=32", "train.recon_every=1", "train.max_steps=4"],
                 ["finetune.ensemble=1", "train.epochs=1", "train.warmup_epochs=0", "finetune.probe_steps=50",
                  "train.max_steps=3"], cnn=False)  # a smoke run: every step, a few updates each


def run_demo(out: Path, quick: bool = False, seed: int = 0, overrides: list[str] | None = None) -> dict:
    from sbssl.data.check import check_dataset
    from sbssl.engine.pretrain import pretrain
    from sbssl.evaluation.report_files import compare_runs, load_metrics
    from sbssl.explain import explain
    from sbssl.report import build_report
    from sbssl.synth import SynthSpec, generate
    from sbssl.utils.io import atomic_write_text
    from sbssl.workflow import finetune

    size = QUICK if quick else FULL
    extra = list(overrides or [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data" / "MRNet-v1.0"
    cmds: list[str] = []
    t0 = time.perf_counter()

    def step(name: str, cmd: str) -> None:
        cmds.append(cmd)
        log.info("[%5.0fs] %s", time.perf_counter() - t0, name)

    step("synth", f"sbssl synth --out {data} --train {size.train} --valid {size.valid} --size {size.size} "
                  f"--seed {seed}")
    if not (data / "valid-acl.csv").exists():
        generate(data, SynthSpec(size.train, size.valid, size.size, seed))
    step("check", f"sbssl check --data {data}")
    rep = check_dataset(data)
    if not rep.ok:
        raise RuntimeError(rep.text())
    pre = out / "pretrain"
    pre_args = [*size.pretrain, *extra]
    step("pretrain", f"sbssl pretrain --config pretrain/demo --data {data} --out {pre} {' '.join(pre_args)}")
    if not (pre / ENCODER).exists():
        pretrain(load_config("pretrain/demo", pre_args), data, pre)
    runs = {k: v for k, v in ARMS.items() if size.cnn or k != "cnn"}
    for name, runs_extra in runs.items():
        run = out / f"finetune-{name}"
        args = [*size.finetune, *runs_extra, *extra]
        step(f"finetune {name}", f"sbssl finetune --config finetune/demo --data {data} --out {run} {' '.join(args)}")
        if not (run / METRICS).exists():
            finetune(load_config("finetune/demo", args), data, run)
    step("compare", f"sbssl compare {out / 'finetune-gmml'} {out / 'finetune-scratch'} --out {out / 'compare'}")
    cmp = compare_runs(out / "finetune-gmml", out / "finetune-scratch", out / "compare")
    step("explain", f"sbssl explain --model {out / 'finetune-gmml'} --data {data} --out {out / 'explain'} --n 4")
    explain(out / "finetune-gmml", data, out / "explain", n=4)
    if "cnn" in runs:  # the strongest model at this scale has no attention: its Grad-CAM, beside the ViT's maps
        step("explain cnn", f"sbssl explain --model {out / 'finetune-cnn'} --data {data} --out {out / 'explain-cnn'} "
                            f"--n 4")
        explain(out / "finetune-cnn", data, out / "explain-cnn", n=4)
    atomic_write_text(out / "commands.txt", "\n".join(cmds) + "\n")
    step("report", f"sbssl report {out} --out {out / 'report.html'}")
    report = build_report([out], out / "report.html", "sbssl demo: SB-SSL on the synthetic knee MRI set")
    m = {k: load_metrics(out / f"finetune-{k}") for k in runs}
    return {"report": report, "metrics": m, "compare": cmp, "seconds": time.perf_counter() - t0}
