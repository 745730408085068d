"""Finding exams and labels on disk: MRNet-v1.0 layout, or a generic folder + labels.csv.

MRNet-v1.0:  ROOT/{train,valid}/{sagittal,coronal,axial}/NNNN.npy
             ROOT/{train,valid}-{abnormal,acl,meniscus}.csv   (no header: ``0000,1``)
Generic:     ROOT[/SPLIT]/<case>.npy | <case>.nii[.gz] | <case>/ (DICOM series)
             ROOT[/SPLIT]/labels.csv                          (header ``case,label``)
             ROOT[/SPLIT]/roi.csv, optional                   (header ``case,x,y,z,height,width,depth``: one
                                                               region-of-interest box per exam, as KneeMRI ships)
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from sbssl.data.volume_io import case_id, is_volume_path
from sbssl.errors import DataError

PLANES = ("sagittal", "coronal", "axial")  # MRNet's three series per exam
ALL_PLANES = "all"  # data.plane for pretraining on the slices of every plane
TASKS = ("abnormal", "acl", "meniscus")  # MRNet's three labels, in its order
SPLITS = ("train", "valid")
# data.roi: the central region (crop, slab); the same region about the knee (data/localise.py); a window about
# the ACL (data/acl_region.py); each exam's ROI box (roi.csv)
ROI_MODES = ("center", "knee", "acl", "box")
log = logging.getLogger("sbssl")


@dataclass(frozen=True)
class ExamRecord:
    case: str  # the id as the dataset spells it ("0005", "1130", a file name)
    path: Path
    label: int | None  # None where unknown
    box: tuple[int, int, int, int, int, int] | None = None  # ROI box x, y, z, height, width, depth (roi.csv)


def case_key(case: str) -> str:
    """Ids compare without zero padding: '0005' == '5'."""
    return (case.lstrip("0") or "0") if case.isascii() and case.isdigit() else case


def read_csv_rows(path: Path, what: str) -> list[list[str]]:
    """A CSV file's rows (BOM tolerated); a missing, unreadable or malformed file is one DataError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(path, f"{what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"unreadable {what} file ({e.__class__.__name__})") from None
    try:
        return list(csv.reader(text.splitlines()))
    except csv.Error as e:
        raise DataError(path, f"malformed CSV ({e})") from None


def read_labels(path: Path, header: bool | None = None) -> dict[str, tuple[str, int]]:
    """Label CSV -> {key: (case as written, 0/1)}; faults name the file and row."""
    path = Path(path)
    rows = read_csv_rows(path, "label")
    out: dict[str, tuple[str, int]] = {}
    for i, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        if not row or all(c == "" for c in row):
            continue
        if i == 1 and (header or (header is None and row[-1].lower() in ("label", "labels", "y", "target"))):
            continue
        if len(row) != 2 or not row[0]:
            raise DataError(path, f"row {i}: want 'case,label', got {','.join(row)[:60]!r}")
        case, label = row
        if label not in ("0", "1"):
            raise DataError(path, f"row {i}: label {label[:20]!r} for case {case[:40]!r} is not 0 or 1")
        k = case_key(case)
        if k in out:
            raise DataError(path, f"row {i}: case {case[:40]!r} listed twice")
        out[k] = (case, int(label))
    return out


ROI_FILE = "roi.csv"
FINDINGS_DIR = "findings"  # beside train/ and valid/: a synthetic set's ground truth and synth.json; never read
SYNTH_RECORD = "synth.json"  # as labels or volumes


def synth_family(root: Path) -> str | None:
    """The family a synthetic set was drawn from (`sbssl synth --family`), None for any other dataset; sets
    written before families existed are the demo's."""
    d = Path(root) / FINDINGS_DIR
    if (d / SYNTH_RECORD).is_file():
        try:
            return str(json.loads((d / SYNTH_RECORD).read_text())["spec"]["family"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return "demo" if (d / "train.csv").is_file() else None
ROI_HEADER = ("case", "x", "y", "z", "height", "width", "depth")


def read_roi_boxes(path: Path) -> dict[str, tuple[int, int, int, int, int, int]]:
    """roi.csv -> {key: (x, y, z, height, width, depth)}: column, row and first slice of the box's corner and its
    size in voxels (KneeMRI's convention, kept by `sbssl import kneemri`); faults name the file and row."""
    path = Path(path)
    out: dict[str, tuple[int, int, int, int, int, int]] = {}
    for i, row in enumerate(read_csv_rows(path, "ROI"), 1):
        row = [c.strip() for c in row]
        if not row or all(c == "" for c in row) or (i == 1 and tuple(c.lower() for c in row) == ROI_HEADER):
            continue
        try:
            x, y, z, h, w, d = (int(v) for v in row[1:])
            if len(row) != 7 or min(x, y, z) < 0 or min(h, w, d) < 1:
                raise ValueError
        except ValueError:
            raise DataError(path, f"row {i}: want 'case,x,y,z,height,width,depth' (whole voxels, sizes >= 1), "
                                  f"got {','.join(row)[:60]!r}") from None
        out[case_key(row[0])] = (x, y, z, h, w, d)
    return out


def is_mrnet(root: Path) -> bool:
    return any((root / f"{s}-{t}.csv").exists() for s in SPLITS for t in TASKS) or \
        any((root / s / p).is_dir() for s in SPLITS for p in PLANES)


def resolve_root(root: Path) -> Path:
    """Accept the folder that holds MRNet-v1.0/ as well as MRNet-v1.0/ itself."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    if (root / "MRNet-v1.0").is_dir() and not is_mrnet(root):
        return root / "MRNet-v1.0"
    return root


def mrnet_split(root: Path, split: str, plane: str, task: str, labelled: bool = True) -> list[ExamRecord]:
    folder = root / split / plane
    if not folder.is_dir():
        raise DataError(folder, f"missing folder for split '{split}', plane '{plane}'")
    files = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() == ".npy" and not p.name.startswith("."):
            files[case_key(p.stem)] = p
    csv_path = root / f"{split}-{task}.csv"
    if not labelled and not csv_path.exists():
        return _records(files, {}, folder)
    labels = read_labels(csv_path, header=None)
    if files and not labels:
        raise DataError(csv_path, "no label rows")
    for k, (case, _) in labels.items():
        if k not in files:
            raise DataError(csv_path, f"case {case} has no volume {split}/{plane}/{case}.npy")
    return _records(files, labels, folder)


def generic_split(folder: Path) -> list[ExamRecord]:
    files = {}
    for p in folder.iterdir():
        if is_volume_path(p) and p.name != "labels.csv":
            files[case_key(case_id(p))] = p
    csv_path = folder / "labels.csv"
    labels = read_labels(csv_path, header=None) if csv_path.exists() else {}
    if files and csv_path.exists() and not labels:
        raise DataError(csv_path, "no label rows")
    for k, (case, _) in labels.items():
        if k not in files:
            raise DataError(csv_path, f"case {case} has no volume in {folder}")
    records = _records(files, labels, folder)
    if (folder / ROI_FILE).is_file():
        boxes = read_roi_boxes(folder / ROI_FILE)
        records = [replace(r, box=boxes.get(case_key(r.case))) for r in records]
    return records


def _records(files: dict[str, Path], labels: dict, folder: Path) -> list[ExamRecord]:
    if labels:
        extra = sorted(set(files) - set(labels))
        if extra:
            log.warning("%s: %d volume(s) not in the label file, skipped (e.g. %s)", folder, len(extra),
                        files[extra[0]].name)
        keys = [k for k in files if k in labels]
    else:
        keys = list(files)
    if not keys:
        raise DataError(folder, "empty split: no exams found")
    keys.sort(key=lambda k: (0, int(k), "") if k.isascii() and k.isdigit() else (1, 0, k))
    if labels:
        return [ExamRecord(files[k].stem if files[k].suffix == ".npy" else case_id(files[k]), files[k],
                           labels[k][1]) for k in keys]
    return [ExamRecord(case_id(files[k]), files[k], None) for k in keys]


def list_exams(root: Path, split: str, plane: str = "sagittal", task: str = "acl",
               labelled: bool = True) -> list[ExamRecord]:
    """The exams of one split (and plane/task for MRNet) with their labels."""
    if plane not in PLANES:
        raise DataError(root, f"unknown plane '{plane}' (want one of {', '.join(PLANES)})")
    if task not in TASKS:
        raise DataError(root, f"unknown task '{task}' (want one of {', '.join(TASKS)})")
    root = resolve_root(root)
    if is_mrnet(root):
        return mrnet_split(root, split, plane, task, labelled)
    folder = root / split if (root / split).is_dir() else root
    return generic_split(folder)
