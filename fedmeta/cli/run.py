"""``fedmeta run``: federated meta-training of a simulated fleet on Flower + Ray."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from .. import config as config_module
from ..errors import ConfigError
from ..federated import FEDERATED_ALGORITHMS, adapt_steps
from ..results import final_table
from ..server_state import STATE_FILE, ServerState

DEFAULT_OUT = "runs/<algorithm>-<YYYYmmdd-HHMMSS>"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fedmeta run``."""
    p = sub.add_parser(
        "run", help="federated meta-training of a simulated fleet (Flower on Ray)",
        description="Meta-train across a simulated fleet of devices with Flower's simulation "
                    "engine: every round sampled training devices adapt on their private "
                    "tasks and send meta-updates; held-out devices adapt the meta-model and "
                    "report pre/post-adaptation quality with 95% confidence intervals. With "
                    "no arguments: a heterogeneous sinusoid fleet of 20 devices (16 train, 4 "
                    "held out), 60 rounds of fedmeta-maml, under a minute. Writes "
                    "results.csv, summary.json, config.json, checkpoint.pt (read by "
                    "`fedmeta evaluate`) and quality.png.")
    p.add_argument("--config", type=Path,
                   help="TOML file with [task], [meta], [federation], [simulation], [train] "
                        "(seed); default: the built-in sinusoid fleet")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE",
                   help="override one field, e.g. --set federation.algorithm=fedreptile "
                        "(repeatable)")
    p.add_argument("--out", type=Path, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="continue a killed run from the server state it saved after its last "
                        "finished round (DIR/server_state.pt, with its config); outputs go "
                        "to DIR; not with --config, --set or --out. A finished run is left "
                        "as it is")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its files are deleted first); "
                        "without it, a folder holding a run is refused")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the config (before Ray starts), simulate, write outputs, print the table."""
    state = None
    if args.resume is not None:
        given = [flag for flag, value in (("--config", args.config), ("--set", args.overrides),
                                          ("--out", args.out), ("--overwrite", args.overwrite))
                 if value]
        if given:
            raise ConfigError(given[0], "given with --resume",
                              "--resume DIR alone (the run's config is in its server state)")
        state = ServerState.load(args.resume / STATE_FILE)
        cfg = config_module.from_dict(state.config)
        if state.round >= cfg.federation.rounds and (args.resume / "summary.json").exists():
            print(f"{args.resume}: this run is finished (all {cfg.federation.rounds} rounds, "
                  f"outputs written); nothing to resume, nothing changed")
            return 0
    else:
        cfg = config_module.load(args.config, args.overrides)
    from ..app.simulation import simulate  # Flower and Ray load only after validation

    fed = cfg.federation
    out = args.resume or args.out or \
        Path("runs") / f"{fed.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    frame = simulate(cfg, out, progress=not args.no_progress, verbose=args.verbose,
                     resume=state, overwrite=args.overwrite)
    summary = frame.attrs["summary"]
    steps = adapt_steps(FEDERATED_ALGORITHMS[fed.algorithm], cfg.meta.inner_steps,
                        cfg.meta.eval_steps, evaluation=True)
    print(f"\n{fed.algorithm}: {fed.num_held_out} held-out devices, "
          f"{summary['held_out_episodes']} episodes, {steps} adaptation steps\n"
          f"{final_table(frame)}")
    print(json.dumps({k: summary[k] for k in ("bytes_down", "bytes_up", "wall_s")}))
    if "privacy" in summary:
        p = summary["privacy"]
        worst, median = (math.inf if v is None else v  # None: infinite (no noise)
                         for v in (p["epsilon"], p["epsilon_device_median"]))
        print(f"privacy: epsilon {worst:.4g} at delta {p['delta']:g} (worst device; median "
              f"device {median:.4g}), {p['sampling']} sampling, "
              f"{p['adjacency']}, {p['accountant']}; guarantee: {p['epsilon_guarantee']}")
    print(f"outputs in {out}")
    return 0
