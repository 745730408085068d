"""`sbssl export`: the ensemble as one ONNX graph that onnxruntime scores as PyTorch does, on any slice count."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sbssl.config import load_config
from sbssl.errors import SbsslError

from .conftest import TINY_VIT, assert_user_error, run_cli


@pytest.fixture(scope="module")
def instance_run(tiny_set: Path, gmml_run: Path, tmp_path_factory) -> Path:
    """The demo's aggregator (a smooth max over every patch token's score), read-out only: seconds."""
    from sbssl.workflow import finetune

    out = tmp_path_factory.mktemp("inst") / "run"
    finetune(load_config(None, TINY_VIT + [f"init={gmml_run}", "finetune.aggregator=instance", "train.epochs=0",
                                           "finetune.probe_steps=20", "finetune.ensemble=2", "finetune.slices=4"]),
             tiny_set, out)
    return out


# A process in which `import torch` fails, as on a machine without it.
NO_TORCH = """import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ImportError(f"no {name} on this machine")
sys.meta_path.insert(0, NoTorch())
"""


def _rows(path: Path) -> dict[str, float]:
    return {r["case"]: float(r["probability"]) for r in csv.DictReader(path.open())}


@pytest.mark.parametrize("which", ["concat", "instance"])
def test_onnx_scores_as_pytorch_on_two_slice_counts(which: str, ft_run: Path, instance_run: Path, tiny_set: Path,
                                                   tmp_path: Path, monkeypatch):
    """In fp32 on both sides: on a CPU with fast bf16, PyTorch would otherwise score in bf16 autocast (5e-4 off)."""
    import onnxruntime as ort

    monkeypatch.setattr("sbssl.engine.runtime.inference_bf16", lambda device: False)

    from sbssl.api import load_model
    from sbssl.export import export_onnx
    from sbssl.exported import OnnxExamClassifier
    from sbssl.predict import predict

    run = ft_run if which == "concat" else instance_run
    exported = export_onnx(run, tmp_path / "onnx")
    rec = json.loads((exported / "export.json").read_text())
    assert rec["preprocessing"] == json.loads((run / "run.json").read_text())["preprocessing"]
    assert rec["members"] == [0, 1] and rec["threshold"] == 0.5
    sess = ort.InferenceSession(str(exported / "exam_classifier.onnx"))
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # the slice count is a dimension of its own
    vol = np.load(sorted((tiny_set / "valid" / "sagittal").glob("*.npy"))[0])
    exams = tmp_path / "exams"
    exams.mkdir()
    for n in (len(vol), 7):  # two slice counts: all of them, and fewer than the classifier reads after the slab
        np.save(exams / f"s{n}.npy", vol[:n])
    model, onnx = load_model(run), OnnxExamClassifier(exported)
    for f in sorted(exams.iterdir()):
        v = np.load(f)
        p, members = onnx.probability(model.preprocessing.prepare(v))
        torch_members = model.ensemble.member_probs(model._prepare(v), np.array([0]))[:, 0]
        np.testing.assert_allclose(members, torch_members, atol=1e-4, rtol=0)
        assert p == pytest.approx(model.predict(v), abs=1e-4)
    # `sbssl predict` on the exported folder: onnxruntime, the same predictions.csv as from the run folder
    assert predict(exported, [exams], tmp_path / "p-onnx") == 0
    assert predict(run, [exams], tmp_path / "p-torch", overlays=False) == 0
    a, b = _rows(tmp_path / "p-onnx" / "predictions.csv"), _rows(tmp_path / "p-torch" / "predictions.csv")
    assert a.keys() == b.keys() == {"s7", f"s{len(vol)}"}
    assert all(abs(a[k] - b[k]) <= 1e-4 for k in a)
    if which == "concat":  # a hospital system without torch: the same predictions from the exported folder
        argv = ["predict", "--model", str(exported), str(exams), "--out", str(tmp_path / "p-no-torch")]
        code = NO_TORCH + (f"from sbssl.cli import main\nrc = main({argv!r})\n"
                           "assert 'torch' not in sys.modules\nsys.exit(rc)")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert _rows(tmp_path / "p-no-torch" / "predictions.csv") == a


def test_export_cli_and_its_faults(ft_run: Path, tmp_path: Path, capsys):
    from sbssl.cli import main
    from sbssl.predict import predict

    out = tmp_path / "exp"
    assert main(["export", "--model", str(ft_run), "--out", str(out)]) == 0  # in-process: the CLI's own path
    graph = (out / "exam_classifier.onnx").read_bytes()
    assert len(graph) > 10_000
    capsys.readouterr()
    assert main(["export", "--model", str(ft_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "--overwrite" in err[-1]
    assert (out / "exam_classifier.onnx").read_bytes() == graph  # nothing clobbered
    assert_user_error(run_cli("predict", "--model", out, "--runtime", "torch", "x.npy", "--out", tmp_path / "p"),
                      "holds an ONNX graph only")  # the CLI's one-line contract, in a fresh process
    with pytest.raises(SbsslError, match="sbssl export"):
        predict(ft_run, [tmp_path], tmp_path / "p", runtime="onnx")
    (out / "export.json").write_text("{not json")
    with pytest.raises(SbsslError, match="export.json: damaged export record"):
        predict(out, [tmp_path], tmp_path / "p")
    rec = {"format": "sbssl-onnx-export", "task": "acl", "preprocessing": json.loads(
        (ft_run / "run.json").read_text())["preprocessing"]}
    (out / "export.json").write_text(json.dumps(rec))
    (out / "exam_classifier.onnx").write_bytes(b"truncated")
    with pytest.raises(SbsslError, match="exam_classifier.onnx: not a loadable ONNX graph"):
        predict(out, [tmp_path], tmp_path / "p")
