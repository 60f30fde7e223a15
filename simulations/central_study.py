"""What the studies on the leaderboard's central Omniglot protocol share (``precision_study``,
``batching_study``): their common options, the protocol declared before the runs (a study
folder holds one), a run's tasks and initial model, its job file, and the report's header
facts."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leaderboard import TEST, VALIDATION, Budget, Job, Row, central_config, host  # noqa: E402

INNER_LR = 0.1  # the leaderboard's sweep (simulations/results/leaderboard.md)


def study_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The options every such study takes (``--out`` defaulting to ``out``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--data-dir", default="", help="folder of Omniglot zips (default: "
                   "$FEDMETA_OMNIGLOT_DIR, else the cache of `fedmeta data download`)")
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--test-episodes", type=int, default=Budget().test_episodes_5)
    p.add_argument("--quick", action="store_true", help="tiny budgets (a check of the "
                   "machinery, not a result)")
    return p


def declare(out: Path, declared: dict[str, Any]) -> None:
    """Record the study's protocol in ``out``; refuse a folder that holds another one."""
    record = out / "protocol.json"
    if record.is_file() and json.loads(record.read_text()) != declared:
        raise SystemExit(f"{out} holds a study of another protocol ({record}); "
                         "use another --out")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(declared, indent=1))


def central_run(algorithm: str, label: str, episodes: int, seed: int,
                data_dir: str) -> tuple[Any, Any, Any]:
    """The run's config, tasks (test alphabets held out, the validation one excluded) and
    its initial model, drawn from ``seed`` (the same for every variant of the run)."""
    import torch

    from fedmeta import config as cfgmod
    from fedmeta.models import build_model
    from fedmeta.tasks.factory import build_tasks

    job = Job(Row(label, "central", algorithm, 5), seed, INNER_LR, 0.0,
              Budget(episodes_5=episodes), data_dir)
    cfg = cfgmod.from_dict(central_config(job, TEST, VALIDATION))
    tasks = build_tasks(cfg.task, seed=seed)
    torch.manual_seed(seed)
    return cfg, tasks, build_model(tasks.model, **tasks.model_kwargs)


def save_job(folder: Path, record: dict[str, Any]) -> None:
    """``folder/job.json``, appearing whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "job.json.partial"
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(folder / "job.json")


def report_facts(script: str, argv: list[str] | None, started: float) -> dict[str, Any]:
    """The command, the commit, the wall time since ``started`` and the host."""
    given = sys.argv[1:] if argv is None else argv
    return {"command": f"python simulations/{script} " + " ".join(given),
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, cwd=Path(__file__).parent).stdout.strip(),
            "wall_s": round(time.perf_counter() - started), "host": host()}


def report_head(doc: str, title: str, meta: dict[str, Any], machine: str) -> list[str]:
    """A report's first lines: ``title``, the protocol (``doc``'s second and third
    paragraphs, with the seeds run), and the command, commit, wall time and host, ending
    with ``machine`` (how the runs shared it)."""
    intro, bullets = doc.split("\n\n")[1:3]
    return [f"# {title}", "", intro.replace("\n", " "), "",
            bullets.replace("\n  ", " ").replace(
                "seeds 0, 1, 2", "seeds " + ", ".join(map(str, meta["seeds"]))), "",
            f"Command: `{meta['command']}` (git {meta['git']}); {meta['wall_s']} s of wall "
            f"time for this invocation, on {meta['host']['cpu']} ({meta['isa']}; "
            f"{meta['host']['cores']} cores, {machine}).", ""]


def pct(value: tuple[float, float]) -> str:
    """A mean and 95% half-width as percent."""
    mean, ci = value
    return f"{100 * mean:.1f}" + ("" if math.isnan(ci) else f" ± {100 * ci:.1f}")


def points(value: tuple[float, float]) -> str:
    """A difference and 95% half-width in percentage points, signed."""
    mean, ci = value
    return f"{100 * mean:+.1f}" + ("" if math.isnan(ci) else f" ± {100 * ci:.1f}")
