"""Plots of a federated run: held-out quality against rounds and against bytes sent."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .results import is_regression


def plot_run(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Post- (and pre-) adaptation held-out score with 95% CIs, against rounds and
    against cumulative bytes communicated; written as a PNG."""
    evals = frame[frame["source"] == "eval"]
    key, label = ("loss", "held-out MSE") if is_regression(frame) else ("acc",
                                                                         "held-out accuracy")
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)  # the Agg canvas: files only, no window, no global backend
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x, xlabel in ((axes[0], evals["round"], "round"),
                          (axes[1], evals["bytes_total"] / 1e6, "MB communicated")):
        for stage, style in (("post", "o-"), ("pre", "s--")):
            ax.errorbar(x, evals[f"{stage}_{key}"], yerr=evals[f"{stage}_{key}_ci95"],
                        fmt=style, capsize=3, label=f"{stage}-adaptation")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
