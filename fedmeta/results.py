"""A federated run's records as one tidy table, its summary and the short final table.

One row per round and source: ``train`` (the sampled devices' scores of the meta-model they
received on the episodes they trained on, before and after ``meta.inner_steps`` steps of
adaptation, weighted by episodes) and ``eval`` (held-out devices before and after
``meta.eval_steps`` steps, with 95% confidence intervals over their episodes). Bytes are
those of the arrays sent to and received from devices. Faults (``docs/reliability.md``): the
round's replies that timed out, crashed, were not finite or malformed (all rejected; ``dropped``
counts the rejected replies), the Byzantine replies injected (accepted: robust aggregation's
business), the good replies the aggregation rule left out and the Byzantine ones among them
(``left_out``, ``byzantine_left_out``: ``norm-filter``, ``norm-filter-bound``,
``norm-direction-filter`` and ``multi-krum``), and which ``attempt`` of the round the row is
with its ``status`` (``ok``, ``retried``: too few good replies, tried again; ``skipped``: no
server step). No host times: the table is a function of the config and the seed alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .meta.evaluation import METRICS

SOURCES = ("train", "eval")  # in a round, devices train first, then held-out ones score
SCORE_COLUMNS = tuple(c for m in METRICS for c in (m, f"{m}_ci95"))
FAULT_COLUMNS = ("timed_out", "crashed", "non_finite", "malformed", "byzantine")
RULE_COLUMNS = ("left_out", "byzantine_left_out")  # good replies the rule did not average
COLUMNS = ("round", "source", "devices", "dropped", "episodes", *SCORE_COLUMNS,
           "bytes_down", "bytes_up", "bytes_total", *FAULT_COLUMNS, *RULE_COLUMNS, "attempt",
           "status")


@dataclass(frozen=True)
class Row:
    """One round's records from one source (``train`` or ``eval``)."""

    round: int
    source: str
    devices: int
    dropped: int
    episodes: int
    scores: dict[str, float]
    bytes_down: int
    bytes_up: int
    faults: dict[str, int] = field(default_factory=dict)  # FAULT_COLUMNS, RULE_COLUMNS
    attempt: int = 0
    status: str = "ok"
    extra: dict[str, float | str] = field(default_factory=dict)  # e.g. privacy's epsilon

    def as_dict(self) -> dict[str, Any]:
        """Flat, with every score column (NaN where the source has none)."""
        return {"round": self.round, "source": self.source, "devices": self.devices,
                "dropped": self.dropped, "episodes": self.episodes,
                **{c: float(self.scores.get(c, math.nan)) for c in SCORE_COLUMNS},
                "bytes_down": self.bytes_down, "bytes_up": self.bytes_up,
                **{c: int(self.faults.get(c, 0)) for c in (*FAULT_COLUMNS, *RULE_COLUMNS)},
                "attempt": self.attempt, "status": self.status, **self.extra}

    def brief(self) -> str:
        """``pre -> post`` of the row's main score: accuracy, or MSE for regression."""
        regression = math.isnan(self.scores.get("post_acc", math.nan))
        name, key = ("mse", "loss") if regression else ("acc", "acc")
        pre, post = (self.scores.get(f"{s}_{key}", math.nan) for s in ("pre", "post"))
        return f"{name} {pre:.3g} -> {post:.3g}"


def table(rows: list[Row]) -> pd.DataFrame:
    """The tidy table: rows by round then source, with cumulative ``bytes_total``;
    accuracy columns are left out for regression (all NaN; the metric learners have NaN
    pre-adaptation scores only)."""
    extra = list(dict.fromkeys(k for r in rows for k in r.extra))
    frame = pd.DataFrame([r.as_dict() for r in rows],
                         columns=[c for c in COLUMNS if c != "bytes_total"] + extra)
    order = frame["source"].map(SOURCES.index)
    frame = frame.assign(_order=order).sort_values(["round", "_order"], kind="stable",
                                                   ignore_index=True).drop(columns="_order")
    frame.insert(frame.columns.get_loc("bytes_up") + 1, "bytes_total",
                 (frame["bytes_down"] + frame["bytes_up"]).cumsum())
    regression = frame["post_acc"].isna().all()  # metric learners: pre_acc alone is NaN
    accuracy = {f"{s}_acc{ci}" for s in ("pre", "post") for ci in ("", "_ci95")}
    return frame[[c for c in (*COLUMNS, *extra) if not (regression and c in accuracy)]]


def is_regression(frame: pd.DataFrame) -> bool:
    """Whether the table scores regression (no accuracy columns)."""
    return "post_acc" not in frame.columns


def summarize_run(frame: pd.DataFrame, algorithm: str, rounds: int,
                  wall_s: float) -> dict[str, Any]:
    """Algorithm, rounds, bytes and the final held-out pre/post scores with 95% CIs
    (``final_pre_mse``... for regression, ``final_pre_acc``... and losses otherwise)."""
    final = frame[frame["source"] == "eval"].iloc[-1]
    names = {"pre_loss": "pre_mse", "post_loss": "post_mse"} if is_regression(frame) else {
        "pre_acc": "pre_acc", "post_acc": "post_acc", "pre_loss": "pre_loss",
        "post_loss": "post_loss"}
    scores = {}
    for column, name in names.items():
        scores[f"final_{name}"] = _json_float(final[column])
        scores[f"final_{name}_ci95"] = _json_float(final[f"{column}_ci95"])
    return {"algorithm": algorithm, "rounds": rounds, "final_round": int(final["round"]),
            "held_out_episodes": int(final["episodes"]), **scores,
            "bytes_down": int(frame["bytes_down"].sum()),
            "bytes_up": int(frame["bytes_up"].sum()), "wall_s": round(wall_s, 2),
            **({"sim_time_s": float(frame["sim_time_s"].max())}  # with a fleet
               if "sim_time_s" in frame else {})}


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def final_table(frame: pd.DataFrame) -> str:
    """Held-out pre- vs post-adaptation scores at every evaluation, as aligned text."""
    key, label = ("loss", "MSE") if is_regression(frame) else ("acc", "accuracy")
    lines = [f"{'round':>5}  {'pre-adaptation ' + label:>26}  {'post-adaptation ' + label:>26}"]
    for _, row in frame[frame["source"] == "eval"].iterrows():
        cells = [f"{row[f'{s}_{key}']:.4g} ± {row[f'{s}_{key}_ci95']:.2g}" for s in ("pre",
                                                                                  "post")]
        lines.append(f"{int(row['round']):>5}  {cells[0]:>26}  {cells[1]:>26}")
    return "\n".join(lines)
