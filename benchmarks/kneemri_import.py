"""KneeMRI import speed on a stand-in of the real volumes' size (the set needs no registration, but no machine
here reaches it): seconds per volume and the projection to its 917 volumes.

    python benchmarks/kneemri_import.py [--volumes 40] [--slices 32] [--work /tmp/kneemri-bench]

Each stand-in is what the public set holds: a pickled uint16 array (slices, 320, 320) with 12-bit values, in
vol01..vol10, half of them left knees (mirrored on import), pickled with protocol 2 as Python 2 wrote them.
Reported: seconds per volume for the whole import (allow-listed unpickling, mirroring, atomic .npy writes with
fsync) and for the unpickling alone, and MB/s of source read.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from sbssl.data.kneemri import COLUMNS, import_kneemri, load_pck  # noqa: E402

REAL_VOLUMES = 917


def make_standins(src: Path, n: int, slices: int) -> int:
    rng = np.random.default_rng(0)
    rows, total = [], 0
    for k in range(n):
        vol = rng.integers(0, 4096, (slices, 320, 320), dtype=np.uint16)
        name = f"{1000 + k}-1.pck"
        folder = src / f"vol{k % 10 + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = pickle.dumps(vol, protocol=2)
        (folder / name).write_bytes(data)
        total += len(data)
        rows.append(f"{1000 + k},1,{k % 3},{k % 2},100,100,{slices // 4},120,120,{slices // 2},{name}\n")
    (src / "metadata.csv").write_text(",".join(COLUMNS) + "\n" + "".join(rows))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=40)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--work", default="/tmp/kneemri-bench")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    src, dst = work / "src", work / "dst"
    size = make_standins(src, a.volumes, a.slices)
    t = time.perf_counter()
    for p in sorted(src.glob("vol*/*.pck")):
        load_pck(p)
    unpickle = (time.perf_counter() - t) / a.volumes
    t = time.perf_counter()
    import_kneemri(src, dst)
    per_volume = (time.perf_counter() - t) / a.volumes
    mb = size / a.volumes / 2**20
    result = {"volumes": a.volumes, "slices": a.slices, "mb_per_volume": round(mb, 2),
              "seconds_per_volume": round(per_volume, 4), "unpickle_seconds_per_volume": round(unpickle, 4),
              "mb_per_second": round(mb / per_volume, 1), "projected_917_seconds": round(per_volume * REAL_VOLUMES)}
    record("kneemri_import", result, f"python benchmarks/kneemri_import.py --volumes {a.volumes} --slices "
           f"{a.slices}", f"{per_volume:.3f} s/volume ({mb / per_volume:.0f} MB/s; unpickling {unpickle:.3f} s), "
           f"917 volumes ~{per_volume * REAL_VOLUMES:.0f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
