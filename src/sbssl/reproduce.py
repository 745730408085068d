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
- cpu: the CPU recipes on the synthetic set (generated when --data is not given): Table 1 with ViT-T only. SB-SSL
  ViT-T is fine-tuned with the demo's recipe (finetune/demo: LP-FT, token scoring) and paired with random init's
  own recipe (finetune/cpu: max pooling, the stronger at this scale); the demo's recipe from random init (the
  demo's scratch arm) is a row of its own. SB-SSL ViT-T starts from the shipped encoder on the synthetic set
  (pretrain/cpu run for 44 epochs on 1,130 other knees of the same generator: unlabelled knees of the same kind,
  never these exams) and from pretrain/cpu on the folder's own train slices (its 24 epochs) on a user's --data,
  the paper's setting. Three ablation runs (pretrain/cpu for 2 epochs, 1 epoch, and 2 with zeros instead of noise,
  each then finetune/cpu) and the grid with MRNet's own model (the CNN, one per plane, fused by logistic
  regression), the model that learns at this budget. ViT-S/B rows are left to the paper scale.

Table 1's rows (`TABLE1`, each beside the paper's figure in summary.json and paired against random init of its
backbone): the random-init CNN and ViT, SB-SSL ViTs, GMML for the CNN (beyond the paper: pretrain/gmml_cnn_cpu
or pretrain/gmml_cnn, then the CNN's recipe), and the ImageNet rows from local weights (`--imagenet-weights DIR`:
DIR/alexnet.pth, torchvision's AlexNet state dict, for MRNet's row; DIR/vit_small.safetensors or .pth, a timm
checkpoint, for the ViT-S comparison). Reference [20]'s jigsaw rows pretrain
the CNN with pretrain/jigsaw_cpu or pretrain/jigsaw (jigsaw.noise=0.5 for "+ noise"). A row that cannot run is
listed with its reason: the ImageNet rows without the weights.
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
# GMML CNN pretraining at 32 px: ~230 slices/s there.
RATES = {"cpu": {"pretrain": 55.0, "pretrain_cnn": 230.0, "vit": 7.5, "cnn": 30.0},
         "paper": {"pretrain": 3000.0, "pretrain_cnn": 6000.0, "vit": 60.0, "cnn": 60.0}}
# Table 1 (ACL, sagittal): row, the paper's AUC (None: beyond the paper), the run folder under OUT (cpu, paper),
# the row it is paired with (random init of the same backbone).
CNN_SCRATCH = {"cpu": "grid/acl-sagittal", "paper": "table1/cnn-scratch"}
TABLE1 = [
    ("Random init CNN (MRNet-style)", 0.754, CNN_SCRATCH, None),
    ("Random init ViT", 0.721, {"cpu": "table1/vit-scratch", "paper": "table1/vit-scratch"}, None),
    ("[20] jigsaw CNN", 0.848, {"cpu": "table1/jigsaw-cnn", "paper": "table1/jigsaw-cnn"},
     "Random init CNN (MRNet-style)"),
    ("[20] + noise", 0.817, {"cpu": "table1/jigsaw-noise-cnn", "paper": "table1/jigsaw-noise-cnn"},
     "Random init CNN (MRNet-style)"),
    ("Random init ViT, SB-SSL's recipe", None, {"cpu": "table1/vit-scratch-token"}, None),
    ("SB-SSL ViT-T", 0.952, {"cpu": "table1/sbssl-vit_tiny", "paper": "table1/sbssl-vit_tiny"}, "Random init ViT"),
    ("SB-SSL ViT-S", 0.954, {"paper": "table1/sbssl-vit_small"}, "Random init ViT"),
    ("SB-SSL ViT-B", 0.954, {"paper": "table1/sbssl-vit_base"}, "Random init ViT"),
    ("MRNet: ImageNet AlexNet", 0.963, {"cpu": "table1/imagenet-alexnet", "paper": "table1/imagenet-alexnet"},
     "Random init CNN (MRNet-style)"),
    ("ImageNet ViT-S", None, {"paper": "table1/imagenet-vit_small"}, "Random init ViT"),
    ("GMML CNN (beyond the paper)", None, {"cpu": "table1/gmml-cnn", "paper": "table1/gmml-cnn"},
     "Random init CNN (MRNet-style)"),
]
TABLE1_BY_ROW = {r[0]: r for r in TABLE1}


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


def plan(out: Path, scale: str, sz: Sizes, extra: list[str] | None = None, imagenet: Path | None = None,
         shipped_encoder: bool = False) -> list[Step]:
    """The steps of a reproduction, in order, with their estimated seconds (`skipped_rows`: what cannot run).
    shipped_encoder: at cpu scale, SB-SSL ViT-T starts from builtin:cpu (only for the synthetic set it was made
    for) instead of pretraining on the data's own slices."""
    if scale not in RATES:
        raise SbsslError(f"reproduce: unknown scale '{scale}' (want cpu or paper)")
    rate, extra = RATES[scale], list(extra or [])
    cpu = scale == "cpu"
    pre_cfg, ft_cfg = ("pretrain/cpu", "finetune/cpu") if cpu else ("pretrain/vit_small", "finetune/vit_small")
    pre_epochs = 2 if cpu else 800
    ft_epochs = 4 if cpu else 50
    members = 1 if cpu else 5
    steps: list[Step] = []

    def pretrain(name: str, cfg: str, over: list[str], epochs: int | None, kind: str = "pretrain") -> Path:
        """The pretraining step's encoder file; epochs None: the recipe's own."""
        from sbssl.config import load_config

        run = out / "pretrain" / name
        n = epochs if epochs is not None else load_config(cfg).train.epochs
        secs = n * sz.train * sz.slices / rate[kind] * (1 if cpu or kind != "pretrain" else _vit_cost(cfg))
        steps.append(Step(f"pretrain {name}", "pretrain", run, cfg,
                          [*([f"train.epochs={epochs}"] if epochs is not None else []), *over, *extra], [], secs))
        return run / ENCODER

    def finetune(name: str, cfg: str, over: list[str], kind: str = "vit", n_members: int = members) -> Path:
        run = out / name
        secs = n_members * ft_epochs * sz.train * 1.6 / rate[kind] * (1 if cpu or kind == "cnn" else _vit_cost(cfg))
        steps.append(Step(f"finetune {name}", "finetune", run, cfg,
                          [f"train.epochs={ft_epochs}", f"finetune.ensemble={n_members}", *over, *extra], [], secs))
        return run

    cnn = ["init=scratch", "model.name=mrnet_cnn", *(["train.lr=3.2e-2"] if cpu else [])]
    # Table 1 (ACL, sagittal). At cpu scale its CNN row is the grid's acl/sagittal run, trained once below.
    if not cpu:
        finetune("table1/cnn-scratch", ft_cfg, cnn, "cnn")
    finetune("table1/vit-scratch", ft_cfg, ["init=scratch"])  # random init's own recipe (cpu: max pooling)
    if cpu:  # SB-SSL ViT-T with the demo's recipe, and that recipe from random init (the demo's scratch arm)
        from sbssl.demo import ARMS

        finetune("table1/vit-scratch-token", "finetune/demo", ARMS["scratch"])
        enc = "builtin:cpu" if shipped_encoder else pretrain("sagittal-vit_tiny", pre_cfg, ["data.plane=sagittal"],
                                                             None)
        # one member at this scale: holding out the fifth its random-init pair holds out
        finetune("table1/sbssl-vit_tiny", "finetune/demo", [f"init={enc}", "finetune.holdout=shared"])
    else:
        for vit in ["vit_tiny", "vit_small", "vit_base"]:
            enc = pretrain(f"sagittal-{vit}", f"pretrain/{vit}", ["data.plane=sagittal"], pre_epochs)
            finetune(f"table1/sbssl-{vit}", f"finetune/{vit}", [f"init={enc}"])
    # GMML for the CNN (its recipe's epochs), then the CNN's fine-tuning recipe from it
    enc = pretrain("sagittal-gmml_cnn", "pretrain/gmml_cnn_cpu" if cpu else "pretrain/gmml_cnn",
                   ["data.plane=sagittal"], None, "pretrain_cnn")
    like_grid = ["finetune.select=auc"] if cpu else []  # chosen as the grid's CNN it is paired with
    finetune("table1/gmml-cnn", ft_cfg, [*cnn, *like_grid, f"init={enc}"], "cnn")
    # Reference [20]: jigsaw pretraining of the CNN, plain and with noise on its tiles, then the CNN's recipe
    for name, over in (("jigsaw", []), ("jigsaw-noise", ["jigsaw.noise=0.5"])):
        enc = pretrain(f"sagittal-{name}", "pretrain/jigsaw_cpu" if cpu else "pretrain/jigsaw",
                       ["data.plane=sagittal", *over], None, "pretrain_cnn")
        finetune(f"table1/{name}-cnn", ft_cfg, [*cnn, *like_grid, f"init={enc}"], "cnn")
    # ImageNet transfer from local files (models/imported.py): AlexNet needs >= 128 px
    for row, path in imagenet_files(imagenet, scale).items():
        over = ([*cnn, *like_grid, "data.img_size=128"] if cpu else cnn) if row == "alexnet" else ["init=scratch"]
        finetune(f"table1/imagenet-{row}", ft_cfg if cpu or row == "alexnet" else f"finetune/{row}",
                 [*over, f"init={path}"], "cnn" if row == "alexnet" else "vit")
    # Ablations of the pretraining, on the recipe's ViT: half the epochs; the other corruption (the CPU recipe
    # corrupts with noise, the paper's with zeros). Paper scale: against Table 1's SB-SSL ViT-S; cpu scale:
    # short runs against their own reference (`base`, the recipe's corruption for pre_epochs).
    enc_name = "vit_tiny" if cpu else "vit_small"
    other = "zeros" if cpu else "noise"
    for name, over, epochs in [*([("base", [], pre_epochs)] if cpu else []),
                               (f"epochs{pre_epochs // 2}", [], pre_epochs // 2),
                               (other, [f"mask.type={other}"], pre_epochs)]:
        enc = pretrain(f"sagittal-{enc_name}-{name}", pre_cfg, ["data.plane=sagittal", *over], epochs)
        finetune(f"ablations/{name}", ft_cfg, [f"init={enc}"])
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


def imagenet_files(folder: Path | None, scale: str) -> dict[str, Path]:
    """{"alexnet": DIR/alexnet.pth, "vit_small": DIR/vit_small.(safetensors|pth)} for the rows this scale has; a
    folder without them is one line."""
    if folder is None:
        return {}
    folder = Path(folder)
    out = {"alexnet": folder / "alexnet.pth"}
    if not out["alexnet"].is_file():
        raise SbsslError(f"{folder}: --imagenet-weights wants alexnet.pth (torchvision's AlexNet state dict) there")
    if scale == "paper":
        vit = [p for p in (folder / "vit_small.safetensors", folder / "vit_small.pth") if p.is_file()]
        out |= {"vit_small": vit[0]} if vit else {}
    return out


def skipped_rows(scale: str, imagenet: Path | None) -> list[tuple[str, str]]:
    """Table 1 rows this reproduction cannot run, each with its reason."""
    out = []
    have = imagenet_files(imagenet, scale)
    for row, name in (("MRNet: ImageNet AlexNet", "alexnet"), ("ImageNet ViT-S", "vit_small")):
        if scale in TABLE1_BY_ROW[row][2] and name not in have:
            out.append((row, "needs --imagenet-weights DIR with " + ("alexnet.pth" if name == "alexnet" else
                                                                     "vit_small.safetensors or .pth")))
    return out


def table1_summary(out: Path, scale: str) -> list[dict]:
    """Every Table 1 row of this scale: the paper's AUC beside ours, and ours minus random init of the same
    backbone (paired bootstrap on the same valid exams); rows without a finished run say so."""
    import json

    from sbssl.evaluation.report_files import paired_runs

    rows = []
    for row, paper, runs, base in TABLE1:
        rec: dict = {"row": row, "paper_auc": paper}
        run = Path(out) / runs[scale] if runs and scale in runs else None
        if run is None or not (run / METRICS).exists():
            rec["skipped"] = "not run at this scale or without its inputs"
            rows.append(rec)
            continue
        m = json.loads((run / METRICS).read_text())
        rec |= {"run": str(run.relative_to(out)), "auc": m["auc"], "auc_ci95": m["auc_ci95"]}
        base_runs = TABLE1_BY_ROW[base][2] if base else None
        base_run = Path(out) / base_runs[scale] if base_runs and scale in base_runs else None
        if base_run is not None and (base_run / METRICS).exists():
            d = paired_runs(run, base_run)
            rec["minus_random_init"] = {"vs": base, "difference": d["difference"], "ci95": d["ci95"]}
        rows.append(rec)
    return rows


def paper_auc(method: str, model: str) -> float | None:
    """The paper's Table 1 AUC for a run the report names `method` (report._method) with backbone `model`."""
    if method.startswith("SB-SSL"):
        row = {"vit_tiny": "SB-SSL ViT-T", "vit_small": "SB-SSL ViT-S", "vit_base": "SB-SSL ViT-B"}.get(model)
    else:
        row = {"ImageNet-pretrained CNN (MRNet: AlexNet)": "MRNet: ImageNet AlexNet"}.get(method, method)
    return TABLE1_BY_ROW[row][1] if row in TABLE1_BY_ROW else None


def _vit_cost(cfg: str) -> float:
    """Relative cost of a paper recipe's ViT (ViT-S = 1)."""
    return {"tiny": 0.4, "small": 1.0, "base": 3.5}.get(cfg.rsplit("_", 1)[-1], 1.0)


def plan_text(steps: list[Step], data: Path, skipped: list[tuple[str, str]] = ()) -> str:
    lines, total = [], 0.0
    for s in steps:
        state = "done" if s.done() else f"~{_fmt(s.seconds)}"
        total += 0 if s.done() else s.seconds
        lines.append(f"  [{state:>8s}] {s.name}")
    lines += [f"  [ skipped] Table 1 row '{row}': {why}" for row, why in skipped]
    return (f"plan: {len(steps)} steps, {sum(s.done() for s in steps)} done, about {_fmt(total)} left "
            f"(estimates from measured rates; see sbssl.reproduce.RATES)\n" + "\n".join(lines))


def _fmt(seconds: float) -> str:
    m = seconds / 60
    return f"{seconds:.0f} s" if m < 1 else (f"{m:.0f} min" if m < 120 else f"{m / 60:.1f} h")


def reproduce(out: Path, data: Path | None = None, scale: str = "cpu", extra: list[str] | None = None,
              dry_run: bool = False, imagenet: Path | None = None) -> dict:
    """Run (or, with dry_run, only print) the plan; returns the summary (Table 1 and the grid)."""
    from sbssl.utils.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    synthetic = data is None
    if synthetic:
        if scale != "cpu":
            raise SbsslError("reproduce: --scale paper needs --data (the MRNet-v1.0 folder)")
        data = _synthetic(out)
    steps = plan(out, scale, sizes_of(data, 0.4 if scale == "cpu" else 1.0), extra, imagenet,
                 shipped_encoder=synthetic)
    text = plan_text(steps, data, skipped_rows(scale, imagenet))
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
    summary = {"table1": table1_summary(out, scale), **grid_summary(out)}
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
