"""Learning-curve plots (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def mean_and_band(values: np.ndarray, z: float = 1.96):
    """Per-column mean and a normal-approximation confidence half-width, ignoring NaNs."""
    n = np.isfinite(values).sum(axis=0)
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1])
    return mean, z * np.nan_to_num(std) / np.sqrt(np.maximum(n, 1))


def plot_curve(returns: np.ndarray, path: Path, title: str = "", optimum: float | None = None,
               ylabel: str = "episodic return") -> None:
    """Mean return per episode over rows of ``returns`` with a 95% band, optional optimum line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    returns = returns[:, np.isfinite(returns).any(axis=0)]  # a stopped run: only finished episodes
    episodes = np.arange(1, returns.shape[1] + 1)
    mean, half = mean_and_band(returns)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(episodes, mean, color="C0", label=f"mean over {returns.shape[0]} run(s)")
    ax.fill_between(episodes, mean - half, mean + half, color="C0", alpha=0.25, label="95% confidence")
    if optimum is not None:
        ax.axhline(optimum, color="k", ls="--", lw=1, label=f"optimal return ({optimum:g})")
    ax.set_xlabel("episode")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
