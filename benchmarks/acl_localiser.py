"""Can the ACL be found without a label? The localiser behind data.roi=acl, measured on families it never saw.

oracle_probe.py showed the shipped encoder's frozen tokens read the tear in PD (0.87) when the input is centred on
the ligament at 2-2.8x downsampling, and not in the recipes' region about the knee (0.54-0.67 at 4x, the ACL off-
centre). This asks whether a small network can supply that centre: the product's localiser (models/acl_localiser.py,
trained on the generator's replayed ACL positions, synth/landmarks.py; run in numpy by data/acl_region.py) is
trained on --train sets, or --weights (the shipped one: src/sbssl/weights/acl_localiser.safetensors) is read, and
reported on other families: the error as a fraction of the knee view's side, against always answering the training
mean, and how often the ACL falls inside the window of 0.35 x the field centred on the prediction (data.roi=acl
data.crop=0.35). The product's answer is the median over the view's variants (inverted, two gammas, shifted:
data/acl_region.py), and where they disagree it falls back to the training set's mean position: reported as
`guarded` (the product's), beside the plain single answer, with the variants' spread (its percentiles, and how often
it exceeds UNSURE). `--boxes` writes a set with those windows as ROI boxes (data.roi=box), the route the first
located runs took before data.roi=acl existed.

usage: python benchmarks/acl_localiser.py (--train ROOT[,ROOT] [--epochs 30] | --weights FILE) --test ROOT[,ROOT]
                                          [--boxes TARGET_ROOT OUT --window 0.35] [--name NAME] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import record

from sbssl.data.acl_region import (
    SHIPPED,
    UNSURE,
    VIEW_SLAB,
    acl_region,
    answered,
    load_localiser,
    localise,
)
from sbssl.data.layout import list_exams
from sbssl.data.volume_io import load_volume
from sbssl.models.acl_localiser import split_views


def errors(pred: np.ndarray, y: np.ndarray, side: np.ndarray, field: np.ndarray, window: float,
           prior: np.ndarray) -> dict[str, float]:
    """Error in fractions of the view's side (the larger of row and column); how often the ACL lies inside the
    window centred on the prediction (in stored pixels: window x the field); and the error of always answering
    `prior` (the training exams' mean position), which a localiser must beat to have looked at the image."""
    err, prior_err = np.abs(pred - y).max(1), np.abs(prior - y).max(1)
    return {"median_error": float(np.median(err)), "p90_error": float(np.percentile(err, 90)),
            "inside_window": float((err * side <= window * field / 2).mean()),
            "prior_median_error": float(np.median(prior_err)),
            "prior_inside_window": float((prior_err * side <= window * field / 2).mean())}


def guarded(x: np.ndarray, y: np.ndarray, side: np.ndarray, field: np.ndarray, window: float,
            weights: dict[str, np.ndarray]) -> dict[str, float]:
    """The product's answer (variants' median, the prior where unsure) against the plain single answer."""
    answer, spread = answered(x, weights)
    ok = spread <= UNSURE
    plain = errors(localise(x, weights), y, side, field, window, weights["prior"])
    return {**plain, **{f"guarded_{k}": v for k, v in errors(answer, y, side, field, window, weights["prior"]).items()
                        if not k.startswith("prior")},
            "spread_p50": float(np.median(spread)), "spread_p99": float(np.percentile(spread, 99)),
            "spread_max": float(spread.max()), "unsure": float(1 - ok.mean()), "unsure_threshold": UNSURE}


def write_boxes(weights: Path, root: Path, out: Path, window: float) -> None:
    """`out`: `root`'s sagittal exams in the generic layout with a roi.csv of the localiser's windows (the oracle
    folder's format, oracle_probe.oracle_folder): data.roi=acl's region, as boxes for data.roi=box."""
    for split in ("train", "valid"):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        rows, boxes = [], []
        for r in list_exams(root, split, "sagittal", "acl"):
            s, y, x = acl_region(load_volume(r.path), window, VIEW_SLAB, weights)
            link = folder / r.path.name
            if not link.exists():
                link.symlink_to(r.path.resolve())
            rows.append(f"{r.case},{r.label}\n")
            boxes.append(f"{r.case},{x.start},{y.start},{s.start},{y.stop - y.start},{x.stop - x.start},"
                         f"{s.stop - s.start}\n")
        (folder / "labels.csv").write_text("".join(rows))
        (folder / "roi.csv").write_text("case,x,y,z,height,width,depth\n" + "".join(boxes))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", help="generated family sets to train on (comma-separated; both splits)")
    ap.add_argument("--weights", type=Path, help=f"evaluate this localiser instead (the shipped: {SHIPPED})")
    ap.add_argument("--test", required=True, help="generated family sets to test on (their valid split)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--window", type=float, default=0.35)
    ap.add_argument("--boxes", nargs=2, action="append", default=[], metavar=("TARGET_ROOT", "OUT"),
                    help="also write TARGET_ROOT with the predicted boxes to OUT (generic layout, roi.csv)")
    ap.add_argument("--name", default="acl_localiser")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    if (a.train is None) == (a.weights is None):
        raise SystemExit("give either --train ROOT[,ROOT] or --weights FILE")
    weights = a.weights
    if a.train:
        from sbssl.weights import make_localiser

        weights = make_localiser([Path(r) for r in a.train.split(",")], a.epochs,
                                 Path(tempfile.mkdtemp()) / "acl_localiser.safetensors")
    net = load_localiser(weights)
    result: dict = {"weights": str(a.weights or "trained here")}
    if a.train:
        parts = [split_views(Path(r), s) for r in a.train.split(",") for s in ("train", "valid")]
        x, y, side, field = (np.concatenate([p[i] for p in parts]) for i in range(4))
        result |= {"train_exams": len(x), "train": guarded(x, y, side, field, a.window, net)}
    for root in map(Path, a.test.split(",")):
        x, y, side, field = split_views(root, "valid")
        name = root.parent.name if root.name == "MRNet-v1.0" else root.name
        result[name] = guarded(x, y, side, field, a.window, net)
        print(name, json.dumps(result[name]), flush=True)
    for target, out in a.boxes:
        write_boxes(weights, Path(target), Path(out), a.window)
    if not a.no_record:
        summary = "; ".join(f"{k}: median error {v['median_error']:.3f} (prior {v['prior_median_error']:.3f}, "
                            f"guarded {v['guarded_median_error']:.3f}), inside {v['inside_window']:.0%} "
                            f"(guarded {v['guarded_inside_window']:.0%}, prior {v['prior_inside_window']:.0%}), "
                            f"unsure {v['unsure']:.1%}"
                            for k, v in result.items() if isinstance(v, dict))
        record(a.name, result, "python benchmarks/acl_localiser.py " + " ".join(sys.argv[1:]), summary)


if __name__ == "__main__":
    main()
