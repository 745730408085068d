"""matplotlib set-up in one place: the file-only Agg backend (servers have no display), imported lazily (it
costs ~0.3 s), and figures saved atomically as PNG."""

from __future__ import annotations

from pathlib import Path

from sbssl.utils.io import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path | None = None, dpi: int = 90) -> bytes | None:
    """Write the figure to `path` atomically (or return its PNG bytes when path is None) and close it."""
    plt = pyplot()
    try:
        if path is None:
            import io

            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi)
            return buf.getvalue()
        atomic_write(Path(path), lambda p: fig.savefig(p, dpi=dpi, format="png"))
        return None
    finally:
        plt.close(fig)
