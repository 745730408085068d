"""An exported folder (`sbssl export`) read back and scored with onnxruntime. Torch-free: the preparation is
numpy (data/prepare.py), so a hospital system needs onnxruntime, numpy and scipy, not torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sbssl.data.preprocessing import Preprocessing
from sbssl.errors import SbsslError

GRAPH, RECORD = "exam_classifier.onnx", "export.json"
FORMAT = "sbssl-onnx-export"


def is_export(folder: Path) -> bool:
    return (Path(folder) / RECORD).is_file()


class OnnxExamClassifier:
    """An exported folder scored with onnxruntime: the same preparation, then the graph."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        try:
            rec = json.loads((folder / RECORD).read_text())
            if rec.get("format") != FORMAT:
                raise ValueError("not an sbssl export")
            self.pre = Preprocessing.from_dict(rec["preprocessing"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SbsslError(f"{folder / RECORD}: damaged export record ({str(e)[:80]})") from None
        self.record, self.task = rec, str(rec["task"])
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise SbsslError("scoring an exported model needs onnxruntime: pip install 'sbssl[onnx]'") from None
        try:
            self.session = ort.InferenceSession(str(folder / GRAPH), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a missing or damaged graph
            raise SbsslError(f"{folder / GRAPH}: not a loadable ONNX graph ({str(e).splitlines()[0][:100]})") from None

    def probability(self, prepared: np.ndarray) -> tuple[float, np.ndarray]:
        """(P(positive), each member's) of one exam's prepared uint8 slices."""
        p, members = self.session.run(None, {"slices": prepared.astype(np.float32)})
        return float(p), np.asarray(members)
