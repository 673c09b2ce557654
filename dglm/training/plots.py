"""Loss curves as PNG files, next to the run's states."""

from __future__ import annotations

from pathlib import Path

import torch


def plot_losses(losses: list[float], path: Path, title: str, smooth: int = 50) -> None:
    """Save the raw and smoothed loss curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(losses, alpha=0.3, label="loss")
    if len(losses) >= smooth:
        kernel = torch.ones(smooth) / smooth
        smoothed = torch.conv1d(torch.tensor(losses)[None, None], kernel[None, None]).flatten().tolist()
        axes.plot(range(smooth - 1, len(losses)), smoothed, label=f"mean of {smooth}")
    axes.set(xlabel="step", ylabel="loss", title=title, yscale="log")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
