"""`sbssl export`: a fine-tuned exam classifier as one ONNX graph, and its scoring with onnxruntime.

The graph holds everything after the preprocessing record's volume preparation: the choice of the slices the
classifier reads (evenly spaced, as in training), the intensity normalisation, every member's encoder,
aggregator and head, and the ensemble mean. Its input is one exam's prepared slices (`Preprocessing.prepare`:
uint8 values, any number of slices, as float32); its outputs are P(positive) and each member's. The folder holds
`exam_classifier.onnx` and `export.json` (the preprocessing record, the task, the decision threshold), all a
hospital system needs besides onnxruntime and sbssl's numpy preparation step: sbssl/exported.py reads and scores
such a folder without torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from sbssl import __version__
from sbssl.data.datasets import resample_index
from sbssl.engine.inference import Ensemble, load_ensemble
from sbssl.exported import FORMAT, GRAPH, RECORD
from sbssl.utils.io import atomic_write, atomic_write_json

OPSET = 18
THRESHOLD = 0.5  # the decision threshold of every reported accuracy


class ExamGraph(nn.Module):
    """One exam's prepared slices (S, H, W), uint8 values as float32 -> (P(positive), every member's P)."""

    def __init__(self, ens: Ensemble):
        super().__init__()
        self.members = nn.ModuleList(ens.models).eval()
        self.pre, self.slices = ens.pre, ens.models[0].slices

    def forward(self, slices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one = torch.ones(1, dtype=torch.long, device=slices.device)
        if self.slices > 0:  # training's choice: f evenly spaced slices (repeats when S < f)
            slices = slices.index_select(0, resample_index(one * slices.shape[0], self.slices))
        x = self.pre.normalise(slices[:, None])
        lengths = one * slices.shape[0]
        probs = torch.stack([m(x, lengths).float().softmax(1)[0, 1] for m in self.members])
        return probs.mean(), probs


def export_onnx(run: Path, out: Path, dynamo: bool = False) -> Path:
    """The run's ensemble as `out/exam_classifier.onnx` with a dynamic number of slices, and `out/export.json`.

    `dynamo=False` (the default) traces with the TorchScript exporter: on this project's 2-core CPU it exports the
    demo's two-member ViT in a fifth of the time `torch.export` takes (26 s vs 139 s) and both graphs agree with
    PyTorch to 2e-7; `dynamo=True` (needs onnxscript) is there for when the tracer goes."""
    ens = load_ensemble(Path(run))
    graph = ExamGraph(ens).eval()
    example = torch.randint(0, 256, (max(2 * ens.models[0].slices, 12), ens.pre.img_size, ens.pre.img_size)).float()
    names = {"input_names": ["slices"], "output_names": ["probability", "member_probabilities"]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def write(path: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python ints it records as constants
            if dynamo:
                torch.onnx.export(graph, (example,), dynamo=True, opset_version=OPSET, **names,
                                  dynamic_shapes=({0: torch.export.Dim("slices", min=2, max=1024)},)).save(str(path))
            else:
                torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=OPSET, **names,
                                  dynamic_axes={"slices": {0: "slices"}})

    atomic_write(out / GRAPH, write)
    atomic_write_json(out / RECORD, {
        "format": FORMAT, "sbssl": __version__, "opset": OPSET, "task": str(ens.cfg.data.task),
        "plane": str(ens.cfg.data.plane), "model": str(ens.cfg.model.name), "members": ens.seeds,
        "slices_read": ens.models[0].slices, "threshold": THRESHOLD, "preprocessing": ens.pre.to_dict(),
        "input": "one exam's prepared slices (Preprocessing.prepare), (slices, H, W) uint8 values as float32"})
    return out
