"""`sbssl predict`: exam-level probabilities and saliency overlays (attention or Grad-CAM) for new exams.

New exams (.npy, NIfTI, DICOM series folders or files, or folders of them) through a fine-tuned ensemble (or a
fused one: each exam's three planes), most urgent first; an unreadable input is reported and skipped.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sbssl.data.layout import ROI_FILE, case_key, read_roi_boxes
from sbssl.data.volume_io import case_id, is_volume_path, load_volume
from sbssl.errors import DataError, SbsslError
from sbssl.evaluation.report_files import write_member_predictions, write_predictions
from sbssl.exported import OnnxExamClassifier, is_export
from sbssl.utils.rundir import FUSION, PREDICTIONS

if TYPE_CHECKING:  # torch is imported where a run folder is scored: an exported folder needs none
    from sbssl.data.cache import SliceCache
    from sbssl.engine.inference import Ensemble

log = logging.getLogger("sbssl")


def expand_inputs(paths: list[Path]) -> list[Path]:
    """A DICOM series folder is one exam; any other folder contributes the exams inside it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not _is_series(p):
            out.extend(sorted(c for c in p.iterdir() if is_volume_path(c)))
        else:
            out.append(p)
    return out


def _is_series(folder: Path) -> bool:
    return any(c.is_file() and not c.name.startswith(".") and not c.name.lower().endswith((".npy", ".nii", ".nii.gz"))
               for c in folder.iterdir())


def roi_box(ens, path: Path, name: str) -> tuple[int, ...] | None:
    """A model that reads ROI boxes (data.roi=box) takes each exam's from a roi.csv beside its file or folder."""
    if ens.pre.roi != "box":
        return None
    table = Path(path).parent / ROI_FILE
    box = read_roi_boxes(table).get(case_key(name)) if table.is_file() else None
    if box is None:
        raise DataError(table, f"no ROI box for {name} (this model reads one per exam: case,x,y,z,height,width,"
                               "depth)")
    return box


def exam_cache(vol: np.ndarray, ens: Ensemble, name: str, box: tuple[int, ...] | None = None
               ) -> SliceCache:
    """One exam prepared exactly as in training, wrapped as a one-exam cache."""
    from sbssl.data.cache import SliceCache

    try:
        u8 = ens.pre.prepare(vol, box)
    except ValueError as e:
        raise DataError(name, str(e)) from None
    return SliceCache(u8, np.array([0, len(u8)]), [name], ens.pre.mean, ens.pre.std)


def exam_probability(ens: Ensemble, cache: SliceCache, scorers=None) -> float:
    """The ensemble-mean P(positive) of a one-exam cache (`scorers`: the members, compiled or not)."""
    return float(ens.member_probs(cache, np.array([0]), scorers).mean())


def predict(model_dir: Path, inputs: list[Path], out: Path, device: str = "cpu", overlays: bool = True,
            block: int = 10, compile: bool = False, runtime: str = "auto") -> int:
    """Writes predictions.csv (most probable first) and overlays; returns the number of failed inputs.
    A fused run (`sbssl fuse`) takes exams as folders with sagittal/, coronal/ and axial/ series instead; an
    exported folder (`sbssl export`) is scored with onnxruntime (`runtime`: auto, torch or onnx)."""
    exported = is_export(model_dir)
    if runtime == "onnx" and not exported:
        raise SbsslError(f"{model_dir}: --runtime onnx scores an exported folder: sbssl export --model "
                         f"{model_dir} --out DIR first")
    if runtime == "torch" and exported:
        raise SbsslError(f"{model_dir}: an exported folder holds an ONNX graph only: --runtime onnx (or auto)")
    if exported:
        return predict_onnx(model_dir, inputs, out)
    if (Path(model_dir) / FUSION).is_file():
        return predict_fused(model_dir, inputs, out, device)
    from sbssl.data.datasets import gather_exams
    from sbssl.engine.inference import compile_for_inference, load_ensemble
    from sbssl.explain import explain_exam

    ens = load_ensemble(model_dir, device)
    scorers = [compile_for_inference(m) for m in ens.models] if compile else ens.models
    files = expand_inputs(inputs)
    if not files:
        raise SbsslError("predict: no exams found in the inputs")
    names, probs, failed = [], [], 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        name = case_id(f)
        try:
            cache = exam_cache(load_volume(f), ens, name, roi_box(ens, f, name))
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        p = exam_probability(ens, cache, scorers)
        names.append(name)
        probs.append(p)
        if overlays:
            x, lengths = gather_exams(cache, np.array([0]), ens.models[0].slices)
            explain_exam(ens.models[0], x, lengths, ens.pre, block, out / "overlays" / f"{name}.png",
                         f"{name}: P({ens.cfg.data.task}) = {p:.3f}", int(cache.offsets[-1]), device)
    if names:
        write_predictions(out / PREDICTIONS, names, np.array(probs), None, sort_by_probability=True)
    return failed


def predict_onnx(model_dir: Path, inputs: list[Path], out: Path) -> int:
    """predictions.csv from an exported folder, through onnxruntime (no overlays: they read the attention)."""
    clf = OnnxExamClassifier(model_dir)
    files = expand_inputs(inputs)
    if not files:
        raise SbsslError("predict: no exams found in the inputs")
    names, probs, failed = [], [], 0
    for f in files:
        name = case_id(f)
        try:
            prepared = clf.pre.prepare(load_volume(f), roi_box(clf, f, name))
        except (DataError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        names.append(name)
        probs.append(clf.probability(prepared)[0])
    Path(out).mkdir(parents=True, exist_ok=True)
    if names:
        write_predictions(Path(out) / PREDICTIONS, names, np.array(probs), None, sort_by_probability=True)
    return failed


def plane_series(folders: list[Path], planes: list[str]) -> tuple[dict[str, dict[str, Path]], int]:
    """{case: {plane: series}} from folders laid out as FOLDER/<plane>/<case>.<ext> (an MRNet split folder, or
    one exam's three series); a case missing a plane is reported and skipped."""
    exams: dict[str, dict[str, Path]] = {}
    failed = 0
    for folder in map(Path, folders):
        if not all((folder / pl).is_dir() for pl in planes):
            print(f"error: {folder}: want one folder per plane ({', '.join(planes)}) for a fused model",
                  file=sys.stderr)
            failed += 1
            continue
        found = {pl: {case_id(f): f for f in expand_inputs([folder / pl])} for pl in planes}
        for case in sorted(set().union(*found.values())):
            if all(case in found[pl] for pl in planes):
                exams[case] = {pl: found[pl][case] for pl in planes}
            else:
                lacking = [pl for pl in planes if case not in found[pl]]
                print(f"error: {folder}: exam {case} has no {' or '.join(lacking)} series", file=sys.stderr)
                failed += 1
    return exams, failed


def predict_fused(model_dir: Path, inputs: list[Path], out: Path, device: str = "cpu") -> int:
    """Each exam's planes through their plane runs, then the fitted fusion; writes predictions.csv with the
    fused probability (most probable first) and predictions_planes.csv; returns the number of failures."""
    import json

    from sbssl.engine.inference import load_ensemble
    from sbssl.evaluation.fusion import fused_probability

    fusion = json.loads((Path(model_dir) / FUSION).read_text())
    planes = list(fusion["planes"])
    runs = {pl: load_ensemble(Path(r), device) for pl, r in zip(planes, fusion["runs"], strict=True)}
    exams, failed = plane_series(inputs, planes)
    names, per_plane = [], {pl: [] for pl in planes}
    for case, series in exams.items():
        try:
            p = {pl: exam_probability(runs[pl], exam_cache(load_volume(series[pl]), runs[pl], case))
                 for pl in planes}
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        names.append(case)
        for pl in planes:
            per_plane[pl].append(p[pl])
    if not names and not failed:
        raise SbsslError("predict: no exams found in the inputs")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if names:
        cols = {pl: np.array(v) for pl, v in per_plane.items()}
        write_predictions(out / PREDICTIONS, names, fused_probability(fusion, cols), None,
                          sort_by_probability=True)
        write_member_predictions(out / "predictions_planes.csv", names, np.stack([cols[pl] for pl in planes]),
                                 planes)
    return failed
