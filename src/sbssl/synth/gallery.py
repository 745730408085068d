"""PNG mosaics of the phantom: intact beside torn, to check the set by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sbssl.synth.exam import Labels, acl_slice, render_exam


def acl_gallery(path: Path, pairs: int = 4, seed: int = 0, size: int = 256, difficulty: float = 0.5) -> Path:
    """Rows of sagittal slices through the ACL: intact (left) beside torn (right), varied severity."""
    from sbssl.utils.plotting import pyplot, save_png

    plt = pyplot()

    fig, axes = plt.subplots(pairs, 2, figsize=(6, 3 * pairs), squeeze=False)
    for i in range(pairs):
        for j, lab in enumerate((Labels(0, 0, 0), Labels(1, 1, 0))):
            exam = render_exam(seed, 10_000 + 2 * i + j, "train", lab, size, difficulty)
            k = acl_slice(exam)
            ax = axes[i, j]
            ax.imshow(exam.volumes["sagittal"][k], cmap="gray", vmin=0, vmax=255)
            f = exam.knee.findings
            title = f"torn ACL (severity {f.acl_severity:.2f})" if f.acl_tear else "intact ACL"
            ax.set_title(f"{title}, slice {k}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path, dpi=80)
    return path


def meniscus_gallery(path: Path, pairs: int = 3, seed: int = 0, size: int = 256) -> Path:
    from sbssl.utils.plotting import pyplot, save_png

    plt = pyplot()

    fig, axes = plt.subplots(pairs, 2, figsize=(6, 3 * pairs), squeeze=False)
    for i in range(pairs):
        exam = render_exam(seed, 20_000 + i, "train", Labels(1, 0, 1), size)
        vol, f, grid = exam.volumes["sagittal"], exam.knee.findings, exam.grids["sagittal"]
        x = 19.0 * f.meniscus_side * (-1 if exam.knee.mirror else 1)
        k = int(np.clip(round((x - grid.origin[0]) / grid.axes[0, 0]), 0, len(vol) - 1))
        for j, kk in enumerate((k, min(k + 1, len(vol) - 1))):
            axes[i, j].imshow(vol[kk], cmap="gray", vmin=0, vmax=255)
            axes[i, j].set_title(f"meniscal tear, slice {kk}", fontsize=8)
            axes[i, j].axis("off")
    fig.tight_layout()
    save_png(fig, path, dpi=80)
    return Path(path)
