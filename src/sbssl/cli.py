"""`sbssl COMMAND [--config FILE] [key=value ...]`: a thin layer over the library.

User faults (SbsslError) print one line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sbssl import __version__
from sbssl.errors import SbsslError
from sbssl.utils.rundir import METRICS

log = logging.getLogger("sbssl")


def _common(p: argparse.ArgumentParser, data: bool = True, out: bool = True) -> None:
    p.add_argument("--config", help="YAML file or shipped recipe (e.g. pretrain/demo)")
    if data:
        p.add_argument("--data", help="dataset root (MRNet-v1.0 layout or generic folder)")
    if out:
        p.add_argument("--out", help="run folder to create")
        p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sbssl", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"sbssl {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate the synthetic knee MRI set (MRNet-v1.0 layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=1130)
    p.add_argument("--valid", type=int, default=120)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=float, default=0.5,
                   help="0: every ACL tear conspicuous .. 1: the hardest mix (partial, chronic, mimics, more noise)")
    p.add_argument("--prevalence", type=float, default=0.0,
                   help="share of ACL tears in the train split (default: MRNet's 18.4%%; valid keeps MRNet's 45%%)")
    p.add_argument("--family", default="demo",
                   help="acquisition family (synth/family.py: demo, clinic, mixed, varied, shifted, morphed): "
                        "contrast, field of view, position, slices, matrix, artefacts, storage and subject drawn "
                        "per exam from its ranges; phantom2: another anatomy, tissue model and renderer "
                        "(synth/phantom2.py, a held-out check); a comma-separated list mixes families, exams "
                        "taking them in turn")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    p.add_argument("--gallery", action="store_true", help="also write PNG mosaics under OUT/gallery/")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("import", help="convert a public knee MRI set to the generic layout (once)")
    p.add_argument("dataset", choices=["kneemri"], help="kneemri: Štajduhar et al. 2017 (metadata.csv + vol*/*.pck)")
    p.add_argument("src", help="the folder holding metadata.csv and vol01..vol10")
    p.add_argument("--out", required=True)
    p.add_argument("--task", choices=["injury", "tear"], default="injury",
                   help="positive: any ACL injury (diagnosis >= 1) or a complete tear (diagnosis = 2)")
    p.add_argument("--valid-fraction", type=float, default=0.2, help="share of exams in valid (stratified)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--left", type=int, choices=[0, 1], default=0,
                   help="the kneeLR value of a left knee (mirrored to a right one)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("check", help="validate a dataset and summarise it")
    p.add_argument("--data", required=True)

    p = sub.add_parser("pretrain", help="GMML self-supervised pretraining (stage 1)")
    _common(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (automatic if unfinished); a finished one is extended to a "
                        "larger train.epochs")

    p = sub.add_parser("finetune", help="slice-based fine-tuning of an ensemble (stage 2)")
    _common(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out (automatic if unfinished)")

    p = sub.add_parser("evaluate", help="score a fine-tuned run on a split")
    _common(p)
    p.add_argument("--model", required=True, help="a fine-tuned run folder")
    p.add_argument("--split", default="valid")

    p = sub.add_parser("explain", help="where the model looked: class-token attention (ViT, paper Fig. 5) or "
                                       "Grad-CAM (CNN) overlays, with slice weights")
    _common(p)
    p.add_argument("--model", required=True, help="a fine-tuned run folder")
    p.add_argument("--split", default="valid")
    p.add_argument("--n", type=int, default=6, help="exams to explain")
    p.add_argument("--block", type=int, default=10, help="ViT: the block whose attention is shown (1-indexed)")

    p = sub.add_parser("predict", help="exam-level probabilities for new exams")
    p.add_argument("--model", required=True, help="a fine-tuned run folder, or one exported by `sbssl export`")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto: onnxruntime for an exported folder, PyTorch for a run folder")
    p.add_argument("inputs", nargs="+", help=".npy, .nii/.nii.gz, DICOM series folders, or folders of them")
    p.add_argument("--out", required=True)
    p.add_argument("--no-overlays", action="store_true")
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the ensemble first (~20 s once per model; ~1.5x faster per exam on CPU)")

    p = sub.add_parser("export", help="a fine-tuned ensemble as one ONNX graph (dynamic slice count) + JSON")
    p.add_argument("--model", required=True, help="a fine-tuned run folder")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("report", help="a self-contained report.html from run folders")
    p.add_argument("runs", nargs="+", help="run folders (or a folder holding several)")
    p.add_argument("--out", required=True, help="the HTML file to write")

    p = sub.add_parser("demo", help="the whole pipeline on the synthetic set (CPU-sized)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="smaller settings, about 2 minutes")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides for every training run of the demo (e.g. trainer.precision=32-true)")

    p = sub.add_parser("fuse", help="fuse plane runs with a logistic regression (MRNet), fitted on held-out train")
    p.add_argument("runs", nargs="+", help="fine-tuned runs of one task, one per plane")
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="dataset root (default: the one the runs were trained on)")
    p.add_argument("--split", default="valid", help="the split the fused model is scored on")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("reproduce", help="Table 1, ablations and the 3 x 3 grid with fusion, resumable")
    p.add_argument("--data", help="dataset root (default at --scale cpu: a synthetic set made in OUT/data)")
    p.add_argument("--out", required=True)
    p.add_argument("--scale", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its time estimate only")
    p.add_argument("--imagenet-weights", metavar="DIR",
                   help="adds Table 1's ImageNet rows from local files: DIR/alexnet.pth (torchvision), "
                        "DIR/vit_small.safetensors or .pth (timm)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every training step")

    p = sub.add_parser("compare", help="paired bootstrap of the AUC difference of two runs (or two recipes, each "
                                      "trained at the same seeds)")
    p.add_argument("run_a", help="a run folder, or A0,A1,... : one recipe at several training seeds")
    p.add_argument("run_b", help="the same for b (B0,B1,... trained at A0,A1,...'s seeds): the difference is "
                                 "averaged over seeds, its interval resamples seeds and exams")
    p.add_argument("--out", help="where compare.json/.png go (default: RUN_A)")
    p.add_argument("--reps", type=int, default=2000)
    return ap


def _config(a: argparse.Namespace, default: str | None = None):
    from sbssl.config import load_config

    return load_config(a.config or default, a.overrides)


def _data_root(a: argparse.Namespace, cfg) -> Path:
    root = a.data or cfg.data.root
    if not root:
        raise SbsslError(f"{a.command}: give --data ROOT (or data.root=...)")
    return Path(root)


def _model_data_root(a: argparse.Namespace) -> Path:
    """--data, else the dataset the model in --model was trained on."""
    from sbssl.utils.rundir import run_root

    if a.data:
        return Path(a.data)
    root = run_root(Path(a.model))
    if root:
        return Path(root)
    raise SbsslError(f"{a.command}: give --data ROOT")


def _out(a: argparse.Namespace) -> Path:
    if not a.out:
        raise SbsslError(f"{a.command}: give --out DIR")
    return Path(a.out)


def cmd_pretrain(a: argparse.Namespace) -> None:
    cfg = _config(a)  # a config fault is reported before torch and Fabric are imported (seconds)
    from sbssl.engine.pretrain import pretrain

    path = pretrain(cfg, _data_root(a, cfg), _out(a), overwrite=a.overwrite, resume=a.resume)
    print(f"encoder: {path}")


def cmd_synth(a: argparse.Namespace) -> None:
    import os

    from sbssl.synth import SynthSpec, generate, phantom2
    from sbssl.synth.family import FAMILIES
    from sbssl.synth.gallery import acl_gallery, family_gallery, meniscus_gallery
    from sbssl.utils.rundir import prepare_out

    if a.train < 0 or a.valid < 0 or (a.train + a.valid) == 0:
        raise SbsslError("synth: --train and --valid must be >= 0 and not both 0")
    if a.size < 32:
        raise SbsslError("synth: --size must be >= 32")
    if not 0.0 <= a.difficulty <= 1.0:
        raise SbsslError("synth: --difficulty must be in [0, 1]")
    if not 0.0 <= a.prevalence < 1.0:
        raise SbsslError("synth: --prevalence must be in [0, 1) (0 = MRNet's)")
    known = (*FAMILIES, phantom2.NAME)
    for name in a.family.split(","):
        if name not in known:
            raise SbsslError(f"synth: unknown --family {name!r} (known: {', '.join(known)}; a mix: a,b,...)")
    out = Path(a.out)
    prepare_out(out, a.overwrite, marker="train-acl.csv")
    spec = SynthSpec(a.train, a.valid, a.size, a.seed, a.difficulty, a.prevalence, a.workers or os.cpu_count() or 1,
                     a.family)
    generate(out, spec)
    first_phantom_families = [n for n in spec.families() if n != phantom2.NAME]
    if a.gallery and first_phantom_families:
        fam = FAMILIES[first_phantom_families[0]]
        acl_gallery(out / "gallery" / "acl.png", seed=a.seed, size=a.size, difficulty=a.difficulty, family=fam)
        meniscus_gallery(out / "gallery" / "meniscus.png", seed=a.seed, size=a.size, family=fam)
        for name in first_phantom_families:
            family_gallery(out / "gallery" / f"family-{name}.png", FAMILIES[name], seed=a.seed, size=a.size)
    if a.gallery and phantom2.NAME in spec.families():
        phantom2.gallery(out / "gallery" / f"{phantom2.NAME}.png", seed=a.seed, size=a.size)
    print(f"wrote {a.train}+{a.valid} exams to {out}")


def cmd_import(a: argparse.Namespace) -> None:
    from sbssl.data.kneemri import import_kneemri
    from sbssl.utils.rundir import prepare_out

    out = Path(a.out)
    prepare_out(out, a.overwrite, marker="import.json")
    s = import_kneemri(Path(a.src), out, a.task, a.valid_fraction, a.seed, a.left)
    print(f"{out}: KneeMRI, task {s['task']}: train {s['train']['exams']} exams ({s['train']['positives']} positive), "
          f"valid {s['valid']['exams']} ({s['valid']['positives']} positive); {len(s['skipped'])} skipped")


def cmd_check(a: argparse.Namespace) -> None:
    from sbssl.data.check import check_dataset

    rep = check_dataset(Path(a.data))
    if rep.ok:
        print(rep.text())
        return
    print(f"{rep.root}: {len(rep.faults)} fault(s)", file=sys.stderr)
    for fault in rep.faults:
        print(f"error: {fault}", file=sys.stderr)
    raise SystemExit(2)


def cmd_finetune(a: argparse.Namespace) -> None:
    cfg = _config(a)  # a config fault is reported before torch and Fabric are imported (seconds)
    from sbssl.evaluation.report_files import load_metrics
    from sbssl.workflow import finetune

    out = finetune(cfg, _data_root(a, cfg), _out(a), overwrite=a.overwrite, resume=a.resume)
    m = load_metrics(out)
    print(f"{out}: {m['task']} AUC {m['auc']:.3f} [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}], "
          f"accuracy {m['accuracy']:.3f} ({m['members']} members, {m['split']})")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from sbssl.evaluation.scoring import evaluate_run

    if a.overrides:
        raise SbsslError("evaluate: the model's own config is used; overrides are not accepted")
    out = _out(a)
    out.mkdir(parents=True, exist_ok=True)
    m = evaluate_run(Path(a.model), _model_data_root(a), a.split, out)
    print(f"{out}: AUC {m['auc']:.3f} [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}], accuracy {m['accuracy']:.3f}")


def cmd_fuse(a: argparse.Namespace) -> None:
    from sbssl.evaluation.fusion import fuse
    from sbssl.utils.rundir import prepare_out

    out = Path(a.out)
    prepare_out(out, a.overwrite, marker=METRICS)
    m = fuse([Path(r) for r in a.runs], out, Path(a.data) if a.data else None, a.split)
    planes = ", ".join(f"{x['plane']} {x['auc']:.3f}" for x in m["member_metrics"])
    print(f"{out}: fused {m['task']} AUC {m['auc']:.3f} [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}], "
          f"accuracy {m['accuracy']:.3f} (planes: {planes})")


def cmd_reproduce(a: argparse.Namespace) -> None:
    from sbssl.config import load_config
    from sbssl.data.layout import PLANES
    from sbssl.reproduce import GRID_TASKS, reproduce

    load_config(None, a.overrides)  # a bad override is refused before anything runs
    s = reproduce(Path(a.out), Path(a.data) if a.data else None, a.scale, a.overrides, a.dry_run,
                  Path(a.imagenet_weights) if a.imagenet_weights else None)
    if not s:
        return
    print("\nTable 1 (ACL, sagittal): ours [95% CI] (paper) ours minus random init of the backbone, paired")
    for r in s["table1"]:
        paper = f"({r['paper_auc']:.3f})" if r["paper_auc"] is not None else "(not in the paper)"
        ours = (f"{r['auc']:.3f} [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}]" if "auc" in r
                else f"skipped: {r['skipped']}")
        d = r.get("minus_random_init")
        diff = f"  {d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else ""
        print(f"  {r['row']:32s} {ours:28s} {paper:18s}{diff}".rstrip())
    cols = [*PLANES, "fused"]
    print(f"\n{'task':10s}" + "".join(f"{c:>24s}" for c in cols))
    for t in GRID_TASKS:
        row = s["grid"].get(t, {})
        print(f"{t:10s}" + "".join(f"{row[c]['auc']:>8.3f} [{row[c]['auc_ci95'][0]:.3f}, {row[c]['auc_ci95'][1]:.3f}]"
                                   if c in row else f"{'-':>24s}" for c in cols))
    means = s["mean_auc_over_tasks"]
    print(f"{'mean':10s}" + "".join(f"{means[c]:>24.3f}" if c in means else f"{'-':>24s}" for c in cols))
    print(f"report: {Path(a.out) / 'report.html'}")


def cmd_compare(a: argparse.Namespace) -> None:
    from sbssl.evaluation.report_files import compare_over_seeds, compare_runs

    runs_a, runs_b = ([Path(r) for r in x.split(",") if r] for x in (a.run_a, a.run_b))
    if len(runs_a) != len(runs_b):
        raise SbsslError(f"compare: {len(runs_a)} runs of a and {len(runs_b)} of b; the k-th of each must be "
                         "trained at the same seed")
    out = Path(a.out or runs_a[0])
    if len(runs_a) == 1:
        r = compare_runs(runs_a[0], runs_b[0], out, a.reps)
        print(f"AUC {r['auc_a']:.3f} vs {r['auc_b']:.3f}: difference {r['difference']:+.3f} "
              f"95% CI [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] (paired bootstrap, n={r['n']})")
        return
    r = compare_over_seeds(runs_a, runs_b, out, a.reps)
    print(f"mean AUC over {r['seeds']} seeds {r['auc_a']:.3f} vs {r['auc_b']:.3f}: difference {r['difference']:+.3f}"
          f" 95% CI [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] (seeds and exams resampled; exams only "
          f"[{r['ci95_exams'][0]:+.3f}, {r['ci95_exams'][1]:+.3f}]; per seed "
          + ", ".join(f"{d:+.3f}" for d in r["per_seed"]) + f"; n={r['n']})")


def cmd_explain(a: argparse.Namespace) -> None:
    from sbssl.explain import explain

    if a.overrides:
        raise SbsslError("explain: the model's own config is used; overrides are not accepted")
    paths = explain(Path(a.model), _model_data_root(a), _out(a), a.split, a.n, a.block)
    print(f"wrote {len(paths)} overlays to {a.out}")


def cmd_predict(a: argparse.Namespace) -> None:
    from sbssl.predict import predict

    failed = predict(Path(a.model), [Path(p) for p in a.inputs], Path(a.out), overlays=not a.no_overlays,
                     block=a.block, compile=a.compile, runtime=a.runtime)
    print(f"predictions: {Path(a.out) / 'predictions.csv'}")
    if failed:
        raise SystemExit(2)


def cmd_export(a: argparse.Namespace) -> None:
    from sbssl.export import GRAPH, export_onnx
    from sbssl.utils.rundir import prepare_out

    out = Path(a.out)
    prepare_out(out, a.overwrite, marker=GRAPH)
    export_onnx(Path(a.model), out)
    print(f"exported: {out / GRAPH}")


def cmd_report(a: argparse.Namespace) -> None:
    from sbssl.report import build_report

    for r in a.runs:
        if not Path(r).is_dir():
            raise SbsslError(f"{r}: not a folder")
    print(f"report: {build_report([Path(r) for r in a.runs], Path(a.out))}")


def cmd_demo(a: argparse.Namespace) -> None:
    from sbssl.config import load_config
    from sbssl.demo import run_demo
    from sbssl.utils.rundir import prepare_out

    prepare_out(Path(a.out), a.overwrite, marker="report.html")
    load_config(None, a.overrides)  # a bad override is refused before anything runs
    r = run_demo(Path(a.out), quick=a.quick, overrides=a.overrides)
    c = r["compare"]
    print(f"\ndemo finished in {r['seconds']:.0f} s")
    for name, m in r["metrics"].items():
        print(f"  {name:8s} AUC {m['auc']:.3f} [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}]  "
              f"accuracy {100 * m['accuracy']:.1f}%")
    print(f"  GMML - scratch AUC {c['difference']:+.3f}, 95% CI [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]")
    print(f"report: {r['report']}")


COMMANDS = {"synth": cmd_synth, "import": cmd_import, "check": cmd_check, "pretrain": cmd_pretrain,
            "finetune": cmd_finetune, "evaluate": cmd_evaluate, "compare": cmd_compare, "fuse": cmd_fuse,
            "reproduce": cmd_reproduce, "explain": cmd_explain, "predict": cmd_predict, "export": cmd_export,
            "report": cmd_report,
            "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except SbsslError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
