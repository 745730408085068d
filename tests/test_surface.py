"""The user's surface: explain, predict (every input kind), report in Chromium, demo --quick from the wheel."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sbssl.data.cache import slice_cache_for
from sbssl.data.datasets import gather_exams
from sbssl.engine.inference import load_ensemble
from sbssl.explain import attention_block, cls_attention, slice_importance

from .conftest import run_cli
from .test_data import write_dicom_series


def test_attention_maps_have_slice_shape_and_sum_to_one(ft_run: Path, tiny_set: Path):
    ens = load_ensemble(ft_run)
    model = ens.models[0]
    cache, _ = slice_cache_for(ens.cfg, tiny_set, "valid")
    x, lengths = gather_exams(cache, np.array([0, 1]), model.slices)
    x = ens.pre.normalise(x)
    read = model.encoder.blocks[attention_block(10, len(model.encoder.blocks))]
    assert attention_block(10, 12) == 9 and attention_block(10, 4) == 2 and attention_block(1, 4) == 0
    assert read.attn.fused_attn  # trained with fused attention
    maps = cls_attention(model.encoder, x, block=10)
    assert maps.shape == (x.shape[0], 32, 32)
    assert torch.allclose(maps.sum((1, 2)), torch.ones(x.shape[0]), atol=1e-4) and (maps >= 0).all()
    assert read.attn.fused_attn  # switched back after explaining
    w = slice_importance(model, x, lengths)
    assert [len(v) for v in w] == lengths.tolist()
    assert all(abs(v.sum() - 1) < 1e-4 or v.sum() == 0 for v in w)


def test_grad_cam_of_the_cnn_lights_the_structure_that_drove_the_exam():
    """A bright square in one slice of an otherwise empty exam, a head that reads every feature positively: the
    CNN's Grad-CAM peaks on the square and leaves the empty slices dark."""
    from sbssl.config import load_config
    from sbssl.explain import saliency
    from sbssl.models.build import build_classifier

    torch.manual_seed(0)
    model = build_classifier(load_config("finetune/demo", ["model.name=mrnet_cnn", "init=scratch"])).eval()
    with torch.no_grad():  # logit(positive) - logit(negative) = sum of the pooled features
        model.head.weight.copy_(torch.stack([-torch.ones(256), torch.ones(256)]) / 2)
    x = torch.zeros(4, 1, 32, 32)
    x[2, 0, 20:26, 6:12] = 3.0
    maps, kind = saliency(model, x, torch.tensor([4]))
    assert kind.startswith("Grad-CAM") and maps.shape == (4, 32, 32)
    assert maps[2].sum() == pytest.approx(1.0, abs=1e-4) and maps[[0, 1, 3]].sum() == 0
    peak = divmod(int(maps[2].argmax()), 32)
    assert 16 <= peak[0] < 30 and 2 <= peak[1] < 16, peak  # at the square (give or take a receptive field)
    assert maps[2, 20:26, 6:12].mean() > 3 * maps[2, 0:10, 22:32].mean()  # and brighter there than far from it


def test_explain_command(ft_run: Path, tiny_set: Path, tmp_path: Path):
    res = run_cli("explain", "--model", ft_run, "--data", tiny_set, "--out", tmp_path / "ex", "--n", 2)
    assert res.returncode == 0, res.stderr
    pngs = sorted((tmp_path / "ex").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_predict_every_input_kind_sorted_with_a_broken_one(ft_run: Path, tiny_set: Path, tmp_path: Path):
    inp = tmp_path / "in"
    inp.mkdir()
    vols = [np.load(tiny_set / "valid" / "sagittal" / f"{c:04d}.npy") for c in (24, 25, 26)]
    np.save(inp / "exam_npy.npy", vols[0])
    nib.save(nib.Nifti1Image(np.moveaxis(vols[1], 0, -1).astype(np.int16), np.eye(4)), inp / "exam_nii.nii.gz")
    write_dicom_series(tmp_path / "exam_dcm", vols[2].astype(np.uint16))
    (inp / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    res = run_cli("predict", "--model", ft_run, inp, tmp_path / "exam_dcm", "--out", tmp_path / "out")
    assert res.returncode == 2  # one input failed ...
    assert "broken.npy" in res.stderr and "Traceback" not in res.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").read_text().splitlines()))
    assert {r["case"] for r in rows} == {"exam_npy", "exam_nii", "exam_dcm"}  # ... the others did not stop
    probs = [float(r["probability"]) for r in rows]
    assert probs == sorted(probs, reverse=True) and all(r["label"] == "" for r in rows)
    for r in rows:
        assert (tmp_path / "out" / "overlays" / f"{r['case']}.png").exists()
    # the same exam through predict and through evaluate (the library call behind `sbssl evaluate`, whose CLI
    # test_finetune.py runs) gets the same probability
    from sbssl.evaluation.scoring import evaluate_run

    evaluate_run(ft_run, tiny_set, "valid", tmp_path / "ev")
    evp = {r["case"]: float(r["probability"]) for r in
           csv.DictReader((tmp_path / "ev" / "predictions.csv").read_text().splitlines())}
    got = {r["case"]: float(r["probability"]) for r in rows}
    assert abs(got["exam_npy"] - evp["0024"]) < 0.02


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is required (make test installs it)"
    return path


def render(html_file: Path, tmp_path: Path) -> tuple[str, Path]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([chromium(), *flags, "--dump-dom", html_file.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,2400", html_file.as_uri()],
                   capture_output=True, timeout=120)
    return dom, shot


REPO = Path(__file__).resolve().parents[1]


def installed_wheel(tmp: Path) -> Path:
    """`sbssl` built as a wheel (from a copy of the sources, so the checkout stays clean) and installed alone
    into a fresh venv, which sees this environment's third-party packages (torch and the rest: nothing is
    downloaded) but not the checkout; returns that venv's `sbssl` script."""
    src = tmp / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("sbssl-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = Path(sysconfig.get_paths()["purelib"])  # a plain path line: its editable-install hooks stay off
    (Path(site) / "_third_party.pth").write_text(f"{deps}\n")
    subprocess.run([*pip, "--python", venv / "bin" / "python", "install", "--no-deps", wheel], check=True,
                   capture_output=True, timeout=300)
    return venv / "bin" / "sbssl"


def test_demo_quick_from_the_wheel_and_report_in_chromium(tmp_path: Path):
    """The wheel holds everything the demo needs (the shipped encoder, the recipes, the report template): its
    `sbssl demo --quick`, run from another folder, makes the report; then Chromium renders it."""
    sbssl = installed_wheel(tmp_path / "wheel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([sbssl.parent / "python", "-c", "import sbssl; print(sbssl.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "wheel" / "venv")) and str(REPO / "src") not in where
    out = tmp_path / "demo"
    res = subprocess.run([sbssl, "demo", "--quick", "--out", out], cwd=elsewhere, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "report:" in res.stdout and "GMML - scratch AUC" in res.stdout
    for f in ("data/MRNet-v1.0/train-acl.csv", "pretrain/encoder.safetensors", "finetune-gmml/metrics.json",
              "finetune-scratch/metrics.json", "compare/compare.json", "commands.txt", "report.html"):
        assert (out / f).exists(), f
    assert json.loads((out / "finetune-gmml" / "metrics.json").read_text())["init"].startswith("gmml:")
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") >= 5
    assert "Sensitivity by ACL tear type" in page  # from the synthetic set's findings files
    dom, shot = render(out / "report.html", tmp_path)
    n = page.count("<img ")
    assert f"images-loaded:{n}/{n}" in dom, dom[-500:]
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    # a second demo into the finished folder is refused
    again = subprocess.run([sbssl, "demo", "--quick", "--out", out], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_compiled_inference_matches_eager(ft_run: Path, tiny_set: Path):
    from sbssl.data.cache import slice_cache_for
    from sbssl.engine.inference import compile_for_inference, load_ensemble, predict_probs

    ens = load_ensemble(ft_run)
    cache, records = slice_cache_for(ens.cfg, tiny_set, "valid")
    exams = np.arange(len(records))
    eager = predict_probs(ens.models[0], cache, exams, ens.pre, "cpu", 4)
    compiled = predict_probs(compile_for_inference(ens.models[0]), cache, exams, ens.pre, "cpu", 4)
    assert np.abs(eager - compiled).max() < 1e-3


def test_version_flag_prints_the_package_version():
    from sbssl import __version__

    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"sbssl {__version__}"
