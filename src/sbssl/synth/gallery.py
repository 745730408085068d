"""PNG mosaics of the phantom: intact beside torn, to check the set by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sbssl.synth.exam import Labels, acl_slice, render_exam
from sbssl.synth.family import Family


def acl_gallery(path: Path, pairs: int = 4, seed: int = 0, size: int = 256, difficulty: float = 0.5,
                family: Family | None = None) -> Path:
    """Rows of sagittal slices through the ACL: intact (left) beside torn (right), varied severity."""
    from sbssl.utils.plotting import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(pairs, 2, figsize=(6, 3 * pairs), squeeze=False)
    for i in range(pairs):
        for j, lab in enumerate((Labels(0, 0, 0), Labels(1, 1, 0))):
            exam = render_exam(seed, 10_000 + 2 * i + j, "train", lab, size, difficulty, family)
            k = acl_slice(exam)
            ax = axes[i, j]
            _show(ax, exam.volumes["sagittal"][k])
            f = exam.knee.findings
            title = f"torn ACL (severity {f.acl_severity:.2f})" if f.acl_tear else "intact ACL"
            ax.set_title(f"{title}, slice {k}{_knobs(exam)}", fontsize=7)
            ax.axis("off")
    return save_mosaic(fig, path)


def save_mosaic(fig, path: Path) -> Path:
    """Lay out, write (atomically, making the folder) and close a gallery figure."""
    from sbssl.utils.plotting import save_png

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path, dpi=80)
    return path


def _show(ax, img: np.ndarray) -> None:
    ax.imshow(img, cmap="gray", vmin=0, vmax=max(float(img.max()), 1.0) if img.dtype != np.uint8 else 255)


def _knobs(exam) -> str:
    """The drawn acquisition of a family's sagittal series, in a few words."""
    a = exam.acquisitions["sagittal"] if exam.acquisitions else None
    if a is None:
        return ""
    art = "".join(s for s, on in ((" motion", a.motion), (" ghosts", a.ghosting)) if on)
    return (f"\n{a.sequence}, fill {a.fill:.2f}, off {a.offset_rows:+.2f}/{a.offset_cols:+.2f}, "
            f"{a.rotation:+.0f} deg, SNR {a.snr:.0f}, {a.storage}{art}")


def family_gallery(path: Path, family: Family | None, exams: int = 12, seed: int = 0, size: int = 256) -> Path:
    """A grid of one mid-ACL sagittal slice per exam (torn and intact alternating): what a family looks like."""
    from sbssl.utils.plotting import pyplot

    plt = pyplot()
    cols = 4
    rows = -(-exams // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= exams:
            continue
        lab = Labels(1, 1, 0) if i % 2 else Labels(0, 0, 0)
        exam = render_exam(seed, 30_000 + i, "train", lab, size, 0.5, family)
        k = acl_slice(exam)
        _show(ax, exam.volumes["sagittal"][k])
        ax.set_title(f"{'torn' if lab.acl else 'intact'} ACL, slice {k}{_knobs(exam)}", fontsize=6)
    return save_mosaic(fig, path)


def meniscus_gallery(path: Path, pairs: int = 3, seed: int = 0, size: int = 256, family: Family | None = None) -> Path:
    from sbssl.utils.plotting import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(pairs, 2, figsize=(6, 3 * pairs), squeeze=False)
    for i in range(pairs):
        exam = render_exam(seed, 20_000 + i, "train", Labels(1, 0, 1), size, 0.5, family)
        vol, f, grid = exam.volumes["sagittal"], exam.knee.findings, exam.grids["sagittal"]
        x = 19.0 * f.meniscus_side * (-1 if exam.knee.mirror else 1)
        k = int(np.clip(round((x - grid.origin[0]) / grid.axes[0, 0]), 0, len(vol) - 1))
        for j, kk in enumerate((k, min(k + 1, len(vol) - 1))):
            _show(axes[i, j], vol[kk])
            axes[i, j].set_title(f"meniscal tear, slice {kk}", fontsize=8)
            axes[i, j].axis("off")
    return save_mosaic(fig, path)
