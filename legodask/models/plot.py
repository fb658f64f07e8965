"""A trained model's loss curves per epoch (``store.MODEL_PLOT``)."""

from __future__ import annotations

from pathlib import Path

from .base import SHARES


def plot_losses(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss curves per epoch as a PNG; the shares of valid rows on their own axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = list(dict.fromkeys(k for h in history for k in h if k not in ("epoch", "seconds")))
    shares = [k for k in keys if k in SHARES]
    axes = {k: ax for k in keys}
    if shares:
        right = ax.twinx()
        right.set_ylabel("share of rows drawn")
        right.set_ylim(0, 1)
        axes.update({k: right for k in shares})
    for i, k in enumerate(keys):
        pts = [(h["epoch"], h[k]) for h in history if k in h]
        axes[k].plot(*zip(*pts), label=k, color=f"C{i}", ls=":" if k in shares else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if keys:
        fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
