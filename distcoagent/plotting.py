"""Learning-curve plots (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def mean_and_band(values: np.ndarray, z: float = 1.96):
    """Per-column mean and a normal-approximation confidence half-width, ignoring NaNs.

    A column with one value has a band of 0, one with none a NaN mean and a band of 0 (a failed
    run's partial curve has such columns), without numpy's warnings about empty slices."""
    finite = np.isfinite(values)
    n = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / n
        squares = np.where(finite, values - mean, 0.0) ** 2
        std = np.where(n > 1, np.sqrt(squares.sum(axis=0) / (n - 1)), 0.0)
    return mean, z * std / np.sqrt(np.maximum(n, 1))


def plot_band(x, mean, half, path: Path, *, label: str, xlabel: str, ylabel: str, title: str = "",
              reference: tuple[float, str] | None = None, color: str = "C0", log_x: bool = False,
              floor: float | None = None, marker: str | None = None, legend: str = "lower right") -> None:
    """A mean curve with a shaded confidence band (and an optional horizontal reference line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low = mean - half if floor is None else np.maximum(mean - half, floor)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(x, mean, color=color, marker=marker, ms=3, label=label)
    ax.fill_between(x, low, mean + half, color=color, alpha=0.25, label="95% confidence")
    if reference is not None:
        ax.axhline(reference[0], color="k", ls="--", lw=1, label=reference[1])
    if log_x:
        ax.set_xscale("log")
    if floor is not None:
        ax.set_ylim(bottom=floor)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3, which="both" if log_x else "major")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curve(returns: np.ndarray, path: Path, title: str = "", optimum: float | None = None,
               ylabel: str = "episodic return") -> None:
    """Mean return per episode over rows of ``returns`` with a 95% band, optional optimum line."""
    returns = returns[:, np.isfinite(returns).any(axis=0)]  # a stopped run: only finished episodes
    mean, half = mean_and_band(returns)
    plot_band(np.arange(1, returns.shape[1] + 1), mean, half, path, label=f"mean over {returns.shape[0]} run(s)",
              xlabel="episode", ylabel=ylabel, title=title,
              reference=None if optimum is None else (optimum, f"optimal return ({optimum:g})"))
