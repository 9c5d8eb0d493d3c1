"""Writing a matplotlib figure as a reproducible PNG (no timestamp or version in its metadata)."""

from __future__ import annotations

from pathlib import Path


def save_png(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from lstmops.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
