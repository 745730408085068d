"""Does the region of interest hold the ACL? The central crop against the crop that follows the knee.

The synthetic phantom knows where the ACL is, so the question needs no model: for exams of a family, the ACL's
midpoint is mapped into the stored sagittal series (its sampling grid), and each region of interest (the
recipes' crop and slab, `data.roi=center` and `data.roi=knee`) is asked whether it holds it, and how far inside
(the margin: the distance to the region's nearest edge, as a fraction of its side; < 0 outside). It also reports
the region's side in limb diameters (the scale the model sees the knee at).

usage: python benchmarks/roi_coverage.py --families demo,clinic,mixed --exams 60 [--crop 0.5 --slab 0.4]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _common import record

from sbssl.data.localise import knee_region
from sbssl.data.prepare import roi
from sbssl.synth.exam import Labels, render_exam
from sbssl.synth.family import family
from sbssl.synth.landmarks import acl_midpoint as acl_index


def margin(idx: np.ndarray, region: tuple[slice, slice, slice]) -> tuple[float, float]:
    """(in-plane margin as a fraction of the side, slice margin in slices); negative outside."""
    s, r, c = region
    side = r.stop - r.start
    inplane = min(idx[1] - r.start, r.stop - 1 - idx[1], idx[2] - c.start, c.stop - 1 - idx[2]) / side
    return float(inplane), float(min(idx[0] - s.start, s.stop - 1 - idx[0]))


def centre_region(shape: tuple[int, int, int], crop: float, slab: float) -> tuple[slice, slice, slice]:
    """The index ranges `cache.roi` keeps in centre mode (read off a coordinate volume)."""
    n, h, w = shape
    probe = np.zeros((n, h, w), np.float32)
    probe[:] = np.arange(n)[:, None, None]
    kept = roi(probe, crop, slab)
    s0 = int(kept[0, 0, 0])
    ch, cw = kept.shape[1:]
    return slice(s0, s0 + kept.shape[0]), slice((h - ch) // 2, (h - ch) // 2 + ch), slice((w - cw) // 2,
                                                                                         (w - cw) // 2 + cw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="demo,clinic,mixed")
    ap.add_argument("--exams", type=int, default=60)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--crop", type=float, default=0.5)
    ap.add_argument("--slab", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=40)
    ap.add_argument("--name", default="roi_coverage")
    a = ap.parse_args()
    rows, summary = {}, []
    for name in a.families.split(","):
        fam = family(name)
        out = {"center": [], "knee": []}
        scale = []
        for i in range(a.exams):
            exam = render_exam(a.seed, 50_000 + i, "train", Labels(0, 0, 0), a.size, 0.5, fam)
            vol, idx = exam.volumes["sagittal"], acl_index(exam)
            limb = 2 * max(exam.knee.leg_radius) / np.linalg.norm(exam.grids["sagittal"].axes[:, 1])  # in pixels
            for mode, region in (("center", centre_region(vol.shape, a.crop, a.slab)),
                                 ("knee", knee_region(vol, a.crop, a.slab))):
                out[mode].append(margin(idx, region))
                if mode == "knee":
                    scale.append((region[1].stop - region[1].start) / limb)
        rows[name] = {}
        for mode, ms in out.items():
            m = np.array(ms)
            inside = (m[:, 0] >= 0) & (m[:, 1] >= 0)
            p10 = float(np.percentile(m[:, 0], 10))
            rows[name][mode] = {"acl_inside": float(inside.mean()), "inplane_margin_median": float(np.median(m[:, 0])),
                                "inplane_margin_p10": p10}
            summary.append(f"{name} {mode}: ACL inside {inside.mean():.0%} (margin p10 {p10:+.2f})")
        rows[name]["knee_side_limb_diameters"] = [float(np.percentile(scale, q)) for q in (10, 50, 90)]
        print(summary[-2], "|", summary[-1], "| knee-ROI side in limb diameters p10/50/90",
              " / ".join(f"{v:.2f}" for v in rows[name]["knee_side_limb_diameters"]), flush=True)
    record(a.name, {"crop": a.crop, "slab": a.slab, "exams": a.exams, "families": rows},
           "python benchmarks/roi_coverage.py " + " ".join(sys.argv[1:]), "; ".join(summary))


if __name__ == "__main__":
    main()
