"""`sbssl reproduce`: the paper's Table 1, its ablations and MRNet's 3 x 3 grid with plane fusion, as one
resumable command.

The plan is a list of steps (synthesise, pretrain, fine-tune, fuse), each writing one run folder; a step whose
folder holds its finished marker is skipped, and an interrupted one resumes from its last checkpoint, so
rerunning the same command after a crash finishes the job. The plan and its time estimate are printed first;
one report (Table 1 + the grid) is written at the end.

Scales:
- paper: the paper's recipes (GMML ViT-T/S/B, 800 epochs; fine-tuning 5-member ensembles), the pretraining
  ablations (epochs, corruption type) and the grid with SB-SSL ViT-S per plane, each plane fine-tuned from
  its own plane's pretraining. Meant for the real MRNet folder on a GPU.
- cpu: the CPU recipes (pretrain/cpu, finetune/cpu) on the synthetic set (generated when --data is not given):
  Table 1 with ViT-T only, two ablation runs (1 pretraining epoch; zeros instead of noise), and the grid with
  MRNet's own model (the CNN, one per plane, fused by logistic regression), the model that learns at this
  budget. ViT-S/B rows are left to the paper scale.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from sbssl.data.layout import PLANES, TASKS
from sbssl.errors import SbsslError
from sbssl.utils.rundir import ENCODER, METRICS

log = logging.getLogger("sbssl")

GRID_TASKS = TASKS  # the MRNet competition ranks by their mean AUC
# Throughputs for the plan's estimates. cpu: measured on a 2-core AMD EPYC with AVX512-BF16 (bf16 autocast), CPU
# recipes at 32 px: GMML ViT-T pretraining ~55 slices/s, ViT-T fine-tuning ~7.5 exams/s (8 slices each), the CNN
# ~4x faster (a whole `reproduce --scale cpu` took 30 min against an estimate of 35). paper: the scaling benchmark's
# ViT-S at 256 px on one H100 (~3,000 img/s pretraining; fine-tuning's 32-slice exams at ~2,000 img/s).
RATES = {"cpu": {"pretrain": 55.0, "vit": 7.5, "cnn": 30.0}, "paper": {"pretrain": 3000.0, "vit": 60.0, "cnn": 60.0}}


@dataclass
class Step:
    name: str
    kind: str  # pretrain | finetune | fuse
    out: Path
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)  # a fusion's plane runs
    seconds: float = 0.0

    @property
    def marker(self) -> Path:
        return self.out / (ENCODER if self.kind == "pretrain" else METRICS)

    def done(self) -> bool:
        return self.marker.exists()

    def command(self, data: Path) -> str:
        if self.kind == "fuse":
            return f"sbssl fuse {' '.join(map(str, self.runs))} --out {self.out}"
        return f"sbssl {self.kind} --config {self.config} --data {data} --out {self.out} {' '.join(self.overrides)}"

    def run(self, data: Path) -> None:
        from sbssl.config import load_config

        if self.kind == "pretrain":
            from sbssl.engine.pretrain import pretrain

            pretrain(load_config(self.config, self.overrides), data, self.out, resume=self.out.exists())
        elif self.kind == "finetune":
            from sbssl.workflow import finetune

            finetune(load_config(self.config, self.overrides), data, self.out, resume=self.out.exists())
        else:
            from sbssl.evaluation.fusion import fuse

            self.out.mkdir(parents=True, exist_ok=True)
            fuse(self.runs, self.out, data)


@dataclass(frozen=True)
class Sizes:
    train: int  # exams in the train split
    slices: int  # slices of one exam in the pretraining region of interest (mean)


def sizes_of(data: Path, slab: float) -> Sizes:
    from sbssl.data.layout import list_exams
    from sbssl.data.volume_io import load_npy

    recs = list_exams(data, "train", "sagittal", "acl")
    sample = recs[:: max(1, len(recs) // 20)]
    n = [load_npy(r.path, mmap=True).shape[0] if r.path.suffix == ".npy" else 32 for r in sample]
    return Sizes(len(recs), max(1, round(slab * sum(n) / len(n))))


def plan(out: Path, scale: str, sz: Sizes, extra: list[str] | None = None) -> list[Step]:
    """The steps of a reproduction, in order, with their estimated seconds."""
    if scale not in RATES:
        raise SbsslError(f"reproduce: unknown scale '{scale}' (want cpu or paper)")
    rate, extra = RATES[scale], list(extra or [])
    cpu = scale == "cpu"
    pre_cfg, ft_cfg = ("pretrain/cpu", "finetune/cpu") if cpu else ("pretrain/vit_small", "finetune/vit_small")
    pre_epochs = 2 if cpu else 800
    ft_epochs = 4 if cpu else 50
    members = 1 if cpu else 5
    steps: list[Step] = []

    def pretrain(name: str, cfg: str, over: list[str], epochs: int) -> Path:
        run = out / "pretrain" / name
        secs = epochs * sz.train * sz.slices / rate["pretrain"] * (1 if cpu else _vit_cost(cfg))
        steps.append(Step(f"pretrain {name}", "pretrain", run, cfg, [f"train.epochs={epochs}", *over, *extra], [],
                          secs))
        return run

    def finetune(name: str, cfg: str, over: list[str], kind: str = "vit", n_members: int = members) -> Path:
        run = out / name
        secs = n_members * ft_epochs * sz.train * 1.6 / rate[kind] * (1 if cpu or kind == "cnn" else _vit_cost(cfg))
        steps.append(Step(f"finetune {name}", "finetune", run, cfg,
                          [f"train.epochs={ft_epochs}", f"finetune.ensemble={n_members}", *over, *extra], [], secs))
        return run

    cnn = ["init=scratch", "model.name=mrnet_cnn", *(["train.lr=3.2e-2"] if cpu else [])]
    # Table 1 (ACL, sagittal). Its CNN row is the grid's acl/sagittal run, trained once below.
    finetune("table1/vit-scratch", ft_cfg, ["init=scratch"])
    for vit in ["vit_tiny"] if cpu else ["vit_tiny", "vit_small", "vit_base"]:
        cfg_p, cfg_f = (pre_cfg, ft_cfg) if cpu else (f"pretrain/{vit}", f"finetune/{vit}")
        enc = pretrain(f"sagittal-{vit}", cfg_p, ["data.plane=sagittal"], pre_epochs)
        finetune(f"table1/sbssl-{vit}", cfg_f, [f"init={enc}/encoder.safetensors"])
    # Ablations of the pretraining, on the recipe's ViT: half the epochs; the other corruption (the CPU recipe
    # corrupts with noise, the paper's with zeros).
    enc_name = "vit_tiny" if cpu else "vit_small"
    other = "zeros" if cpu else "noise"
    for name, over, epochs in [(f"epochs{pre_epochs // 2}", [], pre_epochs // 2),
                               (other, [f"mask.type={other}"], pre_epochs)]:
        enc = pretrain(f"sagittal-{enc_name}-{name}", pre_cfg, ["data.plane=sagittal", *over], epochs)
        finetune(f"ablations/{name}", ft_cfg, [f"init={enc}/encoder.safetensors"])
    # The grid: every task on every plane, then fusion per task. Paper scale: one GMML encoder per plane
    # (sagittal's is Table 1's), as the paper pretrains on the plane it classifies.
    if not cpu:
        for plane in [p for p in PLANES if p != "sagittal"]:
            pretrain(f"{plane}-vit_small", pre_cfg, [f"data.plane={plane}"], pre_epochs)
    for task in GRID_TASKS:
        runs = []
        for plane in PLANES:
            # fused on their held-out train exams, so each plane run holds a part out whatever its label count
            where = [f"data.plane={plane}", f"data.task={task}", "finetune.select=auc"]
            if cpu:
                runs.append(finetune(f"grid/{task}-{plane}", ft_cfg, [*cnn, *where], "cnn", 1))
            else:
                enc = out / "pretrain" / f"{plane}-vit_small" / ENCODER
                runs.append(finetune(f"grid/{task}-{plane}", ft_cfg, [f"init={enc}", *where]))
        steps.append(Step(f"fuse {task}", "fuse", out / "grid" / f"{task}-fused", runs=runs,
                          seconds=3 * sz.train * 0.4 / rate["vit"]))
    return steps


def _vit_cost(cfg: str) -> float:
    """Relative cost of a paper recipe's ViT (ViT-S = 1)."""
    return {"tiny": 0.4, "small": 1.0, "base": 3.5}.get(cfg.rsplit("_", 1)[-1], 1.0)


def plan_text(steps: list[Step], data: Path) -> str:
    lines, total = [], 0.0
    for s in steps:
        state = "done" if s.done() else f"~{_fmt(s.seconds)}"
        total += 0 if s.done() else s.seconds
        lines.append(f"  [{state:>8s}] {s.name}")
    return (f"plan: {len(steps)} steps, {sum(s.done() for s in steps)} done, about {_fmt(total)} left "
            f"(estimates from measured rates; see sbssl.reproduce.RATES)\n" + "\n".join(lines))


def _fmt(seconds: float) -> str:
    m = seconds / 60
    return f"{seconds:.0f} s" if m < 1 else (f"{m:.0f} min" if m < 120 else f"{m / 60:.1f} h")


def reproduce(out: Path, data: Path | None = None, scale: str = "cpu", extra: list[str] | None = None,
              dry_run: bool = False) -> dict:
    """Run (or, with dry_run, only print) the plan; returns the grid summary."""
    from sbssl.utils.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        if scale != "cpu":
            raise SbsslError("reproduce: --scale paper needs --data (the MRNet-v1.0 folder)")
        data = _synthetic(out)
    steps = plan(out, scale, sizes_of(data, 0.4 if scale == "cpu" else 1.0), extra)
    text = plan_text(steps, data)
    print(text, flush=True)
    atomic_write_text(out / "plan.txt", text + "\n")
    if dry_run:
        return {}
    atomic_write_text(out / "commands.txt", "".join(s.command(data) + "\n" for s in steps))
    t0 = time.perf_counter()
    for i, s in enumerate(steps, 1):
        if s.done():
            continue
        log.info("[%5.0fs] step %d/%d: %s", time.perf_counter() - t0, i, len(steps), s.name)
        s.run(data)
    summary = grid_summary(out)
    from sbssl.report import build_report

    build_report([out], out / "report.html", f"sbssl reproduce ({scale} scale)")
    from sbssl.utils.io import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    return summary


def _synthetic(out: Path) -> Path:
    """The CPU scale's dataset: 300 train + 120 valid synthetic knees at 64 px (seed 0, difficulty 0.5)."""
    from sbssl.synth import SynthSpec, generate

    data = out / "data" / "MRNet-v1.0"
    if not (data / "valid-acl.csv").exists():
        log.info("generating the synthetic set in %s", data)
        generate(data, SynthSpec(300, 120, 64, seed=0))
    return data


def grid_summary(out: Path) -> dict:
    """{task: {plane or 'fused': {auc, auc_ci95}}} plus each column's mean AUC over tasks."""
    import json

    grid: dict[str, dict] = {}
    for task in GRID_TASKS:
        for col in (*PLANES, "fused"):
            m = Path(out) / "grid" / f"{task}-{col}" / METRICS
            if m.exists():
                d = json.loads(m.read_text())
                grid.setdefault(task, {})[col] = {"auc": d["auc"], "auc_ci95": d["auc_ci95"]}
    means = {col: sum(grid[t][col]["auc"] for t in grid) / len(grid) for col in (*PLANES, "fused")
             if grid and all(col in grid[t] for t in grid)}
    return {"grid": grid, "mean_auc_over_tasks": means}
