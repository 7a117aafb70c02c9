"""Figures of ``reproduce_option_critic``: steps to goal, option durations, options on the map."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .envs.fourrooms import OPEN_CELLS, WALL, cell_of
from .envs.gridworld import MOVES

COLORS = {"coagent option-critic": "C0", "classic option-critic": "C1", "flat actor-critic": "C2"}
SMOOTH = 10  # episodes per plotted point (means of means: the band stays a 95% band of the window mean)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _windows(mean: np.ndarray, half: np.ndarray, size: int = SMOOTH):
    """Non-overlapping window means of a curve and of its half-widths (a conservative band)."""
    n = mean.size // size * size
    if n == 0:
        return np.arange(1, mean.size + 1), mean, half
    x = np.arange(n).reshape(-1, size).mean(axis=1) + 1
    return x, mean[:n].reshape(-1, size).mean(axis=1), half[:n].reshape(-1, size).mean(axis=1)


def plot_steps(summary: dict, path: Path) -> None:
    """Steps to goal per episode for every agent (mean over runs, 95% band), log scale, with the
    optimum before and after the goal move."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=110)
    for name, entry in summary["agents"].items():
        x, m, h = _windows(np.asarray(entry["mean_steps"]), np.asarray(entry["ci95_halfwidth"]))
        color = COLORS.get(name, None)
        ax.plot(x, m, color=color, lw=1.2, label=name)
        ax.fill_between(x, np.maximum(m - h, 1.0), m + h, color=color, alpha=0.25, lw=0)
    move, episodes = summary["goal_move_episode"], summary["episodes"]
    before, after = summary["optimal_steps_before_move"], summary["optimal_steps_after_move"]
    end = move if move else episodes
    ax.hlines(before, 1, end, colors="k", linestyles="--", lw=1, label=f"optimal ({before:.2f}, {after:.2f})")
    if move:
        ax.hlines(after, move, episodes, colors="k", linestyles="--", lw=1)
        ax.axvline(move, color="0.5", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("episode")
    ax.set_ylabel("steps to goal")
    ax.set_title(f"Four Rooms, {summary['runs']} runs, mean and 95% band (goal moves at episode {move})",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_durations(summary: dict, path: Path) -> None:
    """Average option duration (steps per option chosen) per episode, option agents only."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.6), dpi=110)
    for name, entry in summary["agents"].items():
        if "mean_option_duration" not in entry:
            continue
        x, m, h = _windows(np.asarray(entry["mean_option_duration"]), np.asarray(entry["option_duration_ci95"]))
        color = COLORS.get(name, None)
        ax.plot(x, m, color=color, lw=1.2, label=name)
        ax.fill_between(x, m - h, m + h, color=color, alpha=0.25, lw=0)
    if summary["goal_move_episode"]:
        ax.axvline(summary["goal_move_episode"], color="0.5", lw=0.8, ls=":", label="goal moves")
    ax.set_xlabel("episode")
    ax.set_ylabel("average option duration (steps)")
    ax.set_title(f"Steps per option chosen, {summary['runs']} runs, mean and 95% band", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_options(results: dict, path: Path, run: int = 0) -> None:
    """One row per agent, one panel per option: colour = termination probability beta_w(cell),
    arrow = the option's most likely move, dot = cells where the policy over options picks it."""
    plt = _pyplot()
    rows = list(results.items())
    n_options = rows[0][1].intra.shape[2]
    fig, axes = plt.subplots(len(rows), n_options, figsize=(2.4 * n_options + 1.2, 2.5 * len(rows) + 0.5),
                             dpi=120, squeeze=False, layout="constrained")
    image = None
    for r, (name, result) in enumerate(rows):
        intra, beta, over = result.intra[run], result.termination[run], result.over_options[run]
        for w in range(n_options):
            ax = axes[r, w]
            grid = np.full(WALL.shape, np.nan)
            grid[tuple(OPEN_CELLS.T)] = beta[:, w]
            ax.imshow(np.where(WALL, 1.0, np.nan), cmap="Greys", vmin=0, vmax=1.3)
            image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1)
            best = intra[:, w].argmax(axis=1)
            dy, dx = np.asarray(MOVES)[best].T
            ax.quiver(OPEN_CELLS[:, 1], OPEN_CELLS[:, 0], dx, -dy, color="w", scale=30, width=0.011)
            picked = np.flatnonzero(over.argmax(axis=1) == w)
            ax.scatter(OPEN_CELLS[picked, 1], OPEN_CELLS[picked, 0], s=7, c="r", marker="o", zorder=3)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"option {w}", fontsize=8)
            if w == 0:
                ax.set_ylabel(name, fontsize=8)
        if result.extra.get("goal") is not None:
            gy, gx = cell_of(result.extra["goal"])
            for w in range(n_options):
                axes[r, w].scatter([gx], [gy], s=60, marker="*", c="orange", edgecolors="k", linewidths=0.5,
                                   zorder=4)
    fig.colorbar(image, ax=axes, shrink=0.8, label="termination probability beta_w(cell)")
    fig.suptitle(f"Options of run {run} at the end (star: goal): arrows = each option's most likely move, "
                 "red dots = cells where the policy over options picks it", fontsize=8)
    fig.savefig(path)
    plt.close(fig)
