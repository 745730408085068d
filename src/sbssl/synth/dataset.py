"""Write a synthetic set in MRNet-v1.0 layout: volumes, label CSVs, MRNet's prevalences."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sbssl.data.layout import FINDINGS_DIR, PLANES, SYNTH_RECORD, TASKS
from sbssl.synth import phantom2
from sbssl.synth.exam import Labels, findings_row, render_exam
from sbssl.synth.family import family, mix_member, subject_row
from sbssl.utils.io import atomic_write_json, atomic_write_text, save_npy_atomic
from sbssl.utils.progress import progress

# MRNet-v1.0 prevalences: train 913 / 208 / 397 of 1130, valid 95 / 54 / 52 of 120.
PREVALENCE = {"train": {"abnormal": 913 / 1130, "acl": 208 / 1130, "meniscus": 397 / 1130},
              "valid": {"abnormal": 95 / 120, "acl": 54 / 120, "meniscus": 52 / 120}}
ACL_WITH_MENISCUS = 0.5  # share of ACL tears with a meniscal tear too (they travel together)


@dataclass
class SynthSpec:
    train: int = 1130
    valid: int = 120
    size: int = 256
    seed: int = 0
    difficulty: float = 0.5
    prevalence: float = 0.0  # share of ACL tears in the train split; 0 = MRNet's (valid always keeps MRNet's)
    workers: int = max(os.cpu_count() or 1, 1)
    family: str = "demo"  # synth/family.py: FAMILIES; "a,b,...": a mix, the exams' families taken in turn

    def families(self) -> list[str]:
        return self.family.split(",")

    def cases(self) -> list[tuple[str, int]]:
        return [("train", i) for i in range(self.train)] + \
               [("valid", self.train + i) for i in range(self.valid)]


def _count(rate: float, n: int) -> int:
    k = round(rate * n)
    return int(np.clip(k, 1, n - 1)) if n >= 2 else k


def assign_labels(n: int, split: str, seed: int, acl_prevalence: float = 0.0) -> list[Labels]:
    """Exact MRNet prevalences (or `acl_prevalence` for ACL tears); every ACL or meniscus positive is also
    abnormal."""
    rng = np.random.default_rng([seed, 7, 0 if split == "train" else 1])
    rate = dict(PREVALENCE[split])
    if acl_prevalence > 0:
        rate["acl"] = acl_prevalence
    perm = rng.permutation(n)
    n_acl, n_men = _count(rate["acl"], n), _count(rate["meniscus"], n)
    acl = set(perm[:n_acl].tolist())
    overlap = min(round(ACL_WITH_MENISCUS * n_acl), n_men)
    men = set(perm[:overlap].tolist()) | set(perm[n_acl:n_acl + n_men - overlap].tolist())
    torn = acl | men
    rest = [int(i) for i in perm if int(i) not in torn]
    n_abn = max(_count(rate["abnormal"], n), len(torn))
    abnormal = torn | set(rest[: n_abn - len(torn)])
    return [Labels(int(i in abnormal), int(i in acl), int(i in men)) for i in range(n)]


def _write_exam(args: tuple) -> dict[str, object]:
    out, split, case, labels, spec = args
    name = mix_member(spec.family, case)
    tag = {"family": name} if len(spec.families()) > 1 else {}  # a mix names each exam's family
    if name == phantom2.NAME:
        volumes, row = phantom2.render_case(spec.seed, case, split, labels, spec.size)
        row.update(tag)
    else:
        volumes, row = _render_family_exam(case, split, labels, spec, name, tag)
    for plane, vol in volumes.items():
        save_npy_atomic(out / split / plane / f"{case:04d}.npy", vol)
    return row


def _render_family_exam(case: int, split: str, labels: Labels, spec: SynthSpec, name: str, tag: dict
                        ) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The first phantom's exam and its findings row: findings, then `tag`, then what the family drew."""
    exam = render_exam(spec.seed, case, split, labels, spec.size, spec.difficulty, family(name))
    row = {**findings_row(case, exam.knee.findings), **tag}
    if exam.acquisitions:  # what the family drew for the sagittal series (the plane the tasks read first)
        row.update({f"sag_{k}": (round(v, 4) if isinstance(v, float) else int(v) if isinstance(v, bool) else v)
                    for k, v in asdict(exam.acquisitions["sagittal"]).items()})
        row.update(subject_row(exam.knee))
    return exam.volumes, row


def _init_worker() -> None:
    """One BLAS/OpenMP thread per worker: the workers are the parallelism (no oversubscription)."""
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = "1"
    threadpool_limits(1)


def generate(out: Path, spec: SynthSpec) -> None:
    """Render every exam (in parallel, deterministic per case) and write the CSVs last."""
    out = Path(out)
    labels = {"train": assign_labels(spec.train, "train", spec.seed, spec.prevalence),
              "valid": assign_labels(spec.valid, "valid", spec.seed)}
    for split in ("train", "valid"):
        for plane in PLANES:
            (out / split / plane).mkdir(parents=True, exist_ok=True)
    jobs = [(out, split, case, labels[split][case - (0 if split == "train" else spec.train)], spec)
            for split, case in spec.cases()]
    rows = []
    with progress("synth", total=len(jobs), unit="exams") as bar:
        if spec.workers <= 1:
            for job in jobs:
                rows.append(_write_exam(job))
                bar.advance()
        else:
            with ProcessPoolExecutor(spec.workers, initializer=_init_worker) as pool:
                for row in pool.map(_write_exam, jobs, chunksize=4):
                    rows.append(row)
                    bar.advance()
    write_findings(out / FINDINGS_DIR, rows, spec.train)
    described = {name: _described(name) for name in spec.families()}
    atomic_write_json(out / FINDINGS_DIR / SYNTH_RECORD,
                      {"spec": {k: v for k, v in asdict(spec).items() if k != "workers"},
                       "family": described[spec.family] if len(described) == 1 else described})
    for split, first in (("train", 0), ("valid", spec.train)):
        for task in TASKS:
            rows = "".join(f"{first + i:04d},{getattr(lab, task)}\n" for i, lab in enumerate(labels[split]))
            atomic_write_text(out / f"{split}-{task}.csv", rows)


def _described(name: str) -> dict | str:
    if name == phantom2.NAME:
        return phantom2.DESCRIPTION
    fam = family(name)
    return fam.describe() if fam is not None else "demo (synth/exam.py)"


def write_findings(folder: Path, rows: list[dict[str, object]], n_train: int) -> None:
    """findings/{train,valid}.csv: per-exam ground truth (tear type, severity, other findings) for reports."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", rows[:n_train]), ("valid", rows[n_train:])):
        if part:
            columns = list(dict.fromkeys(k for r in part for k in r))  # a mix: the demo's rows lack the knobs
            header = ",".join(columns)
            body = "".join(",".join(str(r.get(k, "")) for k in columns) + "\n" for r in part)
            atomic_write_text(folder / f"{split}.csv", header + "\n" + body)
