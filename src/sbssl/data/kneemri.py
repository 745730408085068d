"""KneeMRI (Štajduhar et al. 2017, Rijeka): its public form read safely and converted once to the generic layout.

Public form:  SRC/metadata.csv   examId,seriesNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,roiHeight,roiWidth,roiDepth,
                                 volumeFilename        (aclDiagnosis 0 healthy, 1 partially injured, 2 ruptured)
              SRC/vol01..vol10/<examId>-<seriesNo>.pck  a pickled numpy array (slices, 320, 320), 12-bit values
Converted:    DST/{train,valid}/<examId>-<seriesNo>.npy + labels.csv (case,label) + roi.csv (the ROI boxes)

The volumes are Python pickles, which can run code when loaded. `load_pck` reads them with an allow-list that
admits numpy's array reconstruction and nothing else: a pickle that names any other callable is refused before
anything it names is called.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbssl.data.layout import read_csv_rows
from sbssl.data.volume_io import check_volume
from sbssl.errors import DataError
from sbssl.utils.io import atomic_write_json, atomic_write_text, save_npy_atomic

log = logging.getLogger("sbssl")

COLUMNS = ("examId", "seriesNo", "aclDiagnosis", "kneeLR", "roiX", "roiY", "roiZ", "roiHeight", "roiWidth",
           "roiDepth", "volumeFilename")
ROI = ("roiX", "roiY", "roiZ", "roiHeight", "roiWidth", "roiDepth")
# Binary tasks of the MRNet reference code on KneeMRI: positive when the diagnosis exceeds the threshold.
TASKS = {"injury": 0, "tear": 1}
MAX_PCK_BYTES = 2**30


def _numpy_core(module: str, name: str):
    """numpy's own function, from numpy._core (numpy 2) or numpy.core (numpy 1.x)."""
    import importlib

    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


class ArrayUnpickler(pickle.Unpickler):
    """Admits only what a pickled numpy array names: numpy's `_reconstruct` (module `numpy.core.multiarray` from
    numpy 1.x / Python 2, `numpy._core.multiarray` from numpy 2) or, for protocol 5, `_frombuffer`;
    `numpy.ndarray`, `numpy.dtype`, and `_codecs.encode` (how protocol 2 under Python 3 spells bytes)."""

    ALLOWED = {(f"numpy.{c}.{m}", n) for c in ("core", "_core")
               for m, n in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))} | \
        {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}, not a numpy array part")
        if module.startswith("numpy.") and module.count(".") == 2:
            return _numpy_core(module.rsplit(".", 1)[1], name)
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused: the pickle uses persistent ids")


def load_pck(path: Path) -> np.ndarray:
    """One KneeMRI volume (slices, H, W) from its pickle, never running anything the file names."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PCK_BYTES:
            raise DataError(path, f"implausibly large pickle ({size} bytes)")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "volume file not found") from None
    except OSError as e:
        raise DataError(path, f"unreadable volume file ({e.__class__.__name__})") from None
    try:  # latin-1: Python 2 pickles store the array's bytes as str
        arr = ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(path, str(e) if str(e).startswith("refused") else f"not a valid pickle ({e})") from None
    except Exception as e:  # truncated or corrupt: many exception types
        raise DataError(path, f"not a readable numpy pickle ({e.__class__.__name__}: {str(e)[:100]})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(path, f"the pickle holds a {type(arr).__name__}, not a numpy array")
    if arr.dtype.hasobject:
        raise DataError(path, "the pickled array holds Python objects; refused")
    return check_volume(arr, path)


@dataclass(frozen=True)
class KneeRow:
    exam: str
    series: str
    diagnosis: int
    knee_lr: int | str  # 0 / 1 as the public metadata writes it, or L / R where a copy spells it out
    roi: tuple[int, int, int, int, int, int]  # x, y, z, height, width, depth
    filename: str

    @property
    def case(self) -> str:
        return Path(self.filename).stem


def read_metadata(path: Path) -> list[KneeRow]:
    """metadata.csv -> rows; each fault names the file and the row."""
    path = Path(path)
    rows = read_csv_rows(path, "metadata")
    if not rows or tuple(c.strip() for c in rows[0]) != COLUMNS:
        raise DataError(path, f"header must be {','.join(COLUMNS)}")
    out, seen = [], set()
    for i, row in enumerate(rows[1:], 2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(COLUMNS):
            raise DataError(path, f"row {i}: {len(row)} fields, want {len(COLUMNS)}")
        r = dict(zip(COLUMNS, (c.strip() for c in row), strict=True))
        try:
            side = r["kneeLR"].upper()
            diagnosis, knee_lr = int(r["aclDiagnosis"]), side if side in ("L", "R") else int(side)
            box = tuple(int(float(r[k])) for k in ROI)
        except ValueError:
            raise DataError(path, f"row {i}: diagnosis, kneeLR and ROI must be numbers") from None
        if diagnosis not in (0, 1, 2):
            raise DataError(path, f"row {i}: aclDiagnosis {diagnosis} is not 0, 1 or 2")
        if knee_lr not in (0, 1, "L", "R"):
            raise DataError(path, f"row {i}: kneeLR {knee_lr} is not 0, 1, L or R")
        name = r["volumeFilename"]
        if not name.endswith(".pck") or "/" in name or "\\" in name or name.startswith("."):
            raise DataError(path, f"row {i}: volumeFilename {name[:60]!r} is not a plain .pck file name")
        if name in seen:
            raise DataError(path, f"row {i}: volume {name} listed twice")
        seen.add(name)
        out.append(KneeRow(r["examId"], r["seriesNo"], diagnosis, knee_lr, box, name))  # type: ignore[arg-type]
    if not out:
        raise DataError(path, "no rows")
    return out


def find_volumes(src: Path) -> dict[str, Path]:
    """volumeFilename -> path, from the vol01..vol10 folders (or SRC itself)."""
    found: dict[str, Path] = {}
    for folder in [src, *sorted(p for p in src.glob("vol*") if p.is_dir())]:
        for p in folder.glob("*.pck"):
            found.setdefault(p.name, p)
    return found


def mirror_left(vol: np.ndarray, box: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """A left knee as a right one. The series is sagittal, so left-right is the slice axis: reversing the stack
    mirrors the knee, and the in-plane anterior-posterior axis is left alone (a flip there no knee produces)."""
    x, y, z, h, w, d = box
    return np.ascontiguousarray(vol[::-1]), (x, y, vol.shape[0] - z - d, h, w, d)


def split_exams(rows: list[KneeRow], labels: dict[str, int], valid_fraction: float, seed: int) -> set[str]:
    """The exam ids that go to valid: stratified on the exam's label, all series of an exam on one side."""
    from sklearn.model_selection import train_test_split

    exam_label: dict[str, int] = {}
    for r in rows:  # an exam is positive when any of its series is
        exam_label[r.exam] = max(exam_label.get(r.exam, 0), labels[r.case])
    exams = sorted(exam_label)
    y = [exam_label[e] for e in exams]
    n_valid = max(1, round(valid_fraction * len(exams)))
    strat = y if min(y.count(0), y.count(1)) >= 2 and n_valid >= 2 else None
    _, valid = train_test_split(exams, test_size=n_valid, random_state=seed, stratify=strat)
    return set(valid)


def import_kneemri(src: Path, dst: Path, task: str = "injury", valid_fraction: float = 0.2, seed: int = 0,
                   left: int = 0) -> dict:
    """Convert KneeMRI to DST/{train,valid}/ (.npy + labels.csv + roi.csv); returns a summary.

    `left` is the kneeLR value that marks a left knee (the public record does not say which; check one exam).
    A row whose volume is missing is skipped with a warning; a volume that fails to load stops the import with
    one line naming it. Each file is written atomically, so a stopped import leaves no half-written volume."""
    if task not in TASKS:
        raise DataError(src, f"unknown KneeMRI task '{task}' (want {' or '.join(TASKS)})")
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(src, "valid fraction must be in (0, 1)")
    src, dst = Path(src), Path(dst)
    rows = read_metadata(src / "metadata.csv")
    volumes = find_volumes(src)
    missing = [r.filename for r in rows if r.filename not in volumes]
    if missing:
        log.warning("%s: %d volume(s) listed in metadata.csv not found, skipped (e.g. %s)", src, len(missing),
                    missing[0])
    rows = [r for r in rows if r.filename in volumes]
    if not rows:
        raise DataError(src, "none of the volumes in metadata.csv were found (want vol01..vol10/*.pck)")
    labels = {r.case: int(r.diagnosis > TASKS[task]) for r in rows}
    valid = split_exams(rows, labels, valid_fraction, seed)
    per_split: dict[str, list[tuple[KneeRow, tuple[int, ...]]]] = {"train": [], "valid": []}
    for r in rows:
        vol = load_pck(volumes[r.filename])
        box = r.roi
        if r.knee_lr == "L" or r.knee_lr == left:  # a letter says it; a number needs `left`
            vol, box = mirror_left(vol, box)
        split = "valid" if r.exam in valid else "train"
        out = dst / split / f"{r.case}.npy"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_npy_atomic(out, vol)
        per_split[split].append((r, box))
    for split, items in per_split.items():
        if not items:
            continue
        atomic_write_text(dst / split / "labels.csv",
                          "case,label\n" + "".join(f"{r.case},{labels[r.case]}\n" for r, _ in items))
        atomic_write_text(dst / split / "roi.csv", "case,x,y,z,height,width,depth\n" + "".join(
            f"{r.case},{','.join(map(str, b))}\n" for r, b in items))
    summary = {"source": str(src.resolve()), "task": task, "valid_fraction": valid_fraction, "seed": seed,
               "left_knee_value": left, "skipped": missing,
               **{s: {"exams": len(v), "positives": sum(labels[r.case] for r, _ in v)} for s, v in per_split.items()}}
    atomic_write_json(dst / "import.json", summary)  # written last: marks a finished import
    return summary

