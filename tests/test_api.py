"""The Python API: the README's example runs as written, and `sbssl.load_model` scores as the CLI does."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sbssl
from sbssl.engine.runtime import inference_bf16
from sbssl.errors import SbsslError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The python block after the `api-example` marker, verbatim."""
    text = README.read_text()
    m = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its api-example block"
    return m.group(1)


def test_readme_example_runs_as_written(tmp_path: Path, monkeypatch):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md:api-example", "exec"), {"__name__": "readme"})
    text = out.getvalue()
    auc = float(re.search(r"valid AUC ([0-9.]+)", text).group(1))
    assert 0.0 <= auc <= 1.0
    one, *two = map(float, re.findall(r"[0-9]\.[0-9]+(?:e-[0-9]+)?", text.split("P(ACL tear)")[1]))
    assert 0.0 < one < 1.0 and len(two) == 2
    np.testing.assert_allclose(two, [one, one], atol=1e-6)  # the array and its NIfTI file: the same exam
    assert (tmp_path / "knee-attention.png").stat().st_size > 1000
    run = tmp_path / "api-demo" / "acl"
    assert (run / "metrics.json").is_file() and (run / "evaluate-valid" / "metrics.json").is_file()


def test_import_sbssl_stays_light_and_exports_what_it_lists():
    code = "import sys, sbssl; assert 'torch' not in sys.modules; print(len(sbssl.__all__))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    for name in sbssl.__all__:
        assert getattr(sbssl, name) is not None, name
    with pytest.raises(AttributeError, match="no_such"):
        sbssl.no_such  # noqa: B018


def test_load_model_scores_as_predict_and_evaluate_do(ft_run: Path, tiny_set: Path, tmp_path: Path):
    from sbssl.evaluation.report_files import load_metrics
    from sbssl.predict import predict

    files = sorted((tiny_set / "valid" / "sagittal").glob("*.npy"))[:3]
    assert predict(ft_run, files, tmp_path / "pred", overlays=False) == 0
    rows = [line.split(",") for line in (tmp_path / "pred" / "predictions.csv").read_text().splitlines()[1:]]
    cli = {r[0]: float(r[1]) for r in rows}
    model = sbssl.load_model(ft_run)
    batched = model.predict(files)  # the three exams through the members together
    singles = [model.predict(np.load(f)) for f in files]
    # scoring runs in bf16 where the CPU has fast bf16 (AMX): its kernels block three exams differently from one,
    # which moves a probability in the 4th digit; in fp32 one exam alone and in a batch agree to 1e-6
    tol = 2e-3 if inference_bf16("cpu") else 1e-6
    np.testing.assert_allclose(batched, [cli[f.stem] for f in files], atol=tol)  # the CLI scores one at a time
    np.testing.assert_allclose(singles, batched, atol=tol)
    np.testing.assert_allclose(singles, [cli[f.stem] for f in files], atol=1e-6)  # one exam, one way
    shown = model.explain(files[0], tmp_path / "x.png")
    assert shown["probability"] == pytest.approx(singles[0], abs=1e-6)  # overlay and predictions.csv agree
    assert len(shown["weights"]) == model.ensemble.models[0].slices and (tmp_path / "x.png").is_file()
    m = sbssl.evaluate(ft_run, tiny_set, out=tmp_path / "ev")
    assert m["auc"] == pytest.approx(load_metrics(ft_run)["auc"])  # the valid split, scored as fine-tuning did


def test_api_refuses_bad_input_with_one_line(ft_run: Path, tmp_path: Path):
    model = sbssl.load_model(ft_run)
    with pytest.raises(SbsslError, match="wrong rank"):
        model.predict(np.zeros((4, 4)))
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(SbsslError, match="bad.npy"):
        model.predict([bad])
    with pytest.raises(SbsslError, match="names no pretrained encoder"):
        sbssl.load_encoder("scratch")
    with pytest.raises(SbsslError, match="not a fine-tuned run"):
        sbssl.load_model(tmp_path)
