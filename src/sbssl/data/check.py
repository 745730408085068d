"""`sbssl check`: validate a whole dataset, collecting every fault, and summarise it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sbssl.data.layout import PLANES, SPLITS, TASKS, ExamRecord, is_mrnet, list_exams, resolve_root
from sbssl.data.volume_io import load_npy, load_volume
from sbssl.errors import DataError


@dataclass
class CheckReport:
    root: Path
    layout: str
    faults: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def text(self) -> str:
        head = f"{self.root} ({self.layout} layout)"
        if self.faults:
            return "\n".join([f"{head}: {len(self.faults)} fault(s)"] + [f"  {f}" for f in self.faults])
        return "\n".join([f"{head}: ok"] + [f"  {r}" for r in self.rows])


def _scan(records: list[ExamRecord], faults: list[str]) -> list[int]:
    counts = []
    for r in records:
        try:
            if r.path.suffix == ".npy":  # full read: truncation and NaN show up only then
                arr = load_npy(r.path)
                counts.append(int(arr.shape[0]))
            else:
                counts.append(int(load_volume(r.path).shape[0]))
        except DataError as e:
            faults.append(str(e))
    return counts


def _balance(records: list[ExamRecord]) -> str:
    labs = [r.label for r in records if r.label is not None]
    return f"{sum(labs)}/{len(labs)} positive" if labs else "unlabelled"


def check_dataset(root: Path) -> CheckReport:
    root = resolve_root(root)
    mrnet = is_mrnet(root)
    rep = CheckReport(root, "MRNet-v1.0" if mrnet else "generic")
    if not mrnet:
        splits = [s for s in SPLITS if (root / s).is_dir()] or ["."]
        for split in splits:
            try:
                recs = list_exams(root, split)
            except DataError as e:
                rep.faults.append(str(e))
                continue
            counts = _scan(recs, rep.faults)
            if counts:
                rep.rows.append(f"{split}: {len(recs)} exams, slices {min(counts)}-{max(counts)}, {_balance(recs)}")
        return rep
    for split in SPLITS:
        for plane in PLANES:
            try:
                recs = list_exams(root, split, plane, "acl", labelled=False)
            except DataError as e:
                rep.faults.append(str(e))
                continue
            counts = _scan(recs, rep.faults)
            if counts:
                c = np.array(counts)
                rep.rows.append(f"{split}/{plane}: {len(recs)} exams, slices {c.min()}-{c.max()} "
                                f"(median {int(np.median(c))})")
        for task in TASKS:
            balance = None
            for plane in PLANES:  # every CSV row needs a volume in every plane
                try:
                    balance = balance or _balance(list_exams(root, split, plane, task))
                except DataError as e:
                    if str(e) not in rep.faults:
                        rep.faults.append(str(e))
            if balance:
                rep.rows.append(f"{split}-{task}: {balance}")
    return rep
