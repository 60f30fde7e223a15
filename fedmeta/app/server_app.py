"""The server: a ServerApp that meta-trains the fleet with the FedMeta strategy.

``flwr run .`` runs ``app`` with the run config of ``pyproject.toml`` (flattened
``section.field`` keys, overridable with ``--run-config``) and logs one line per round and
source, the final table and the tidy table as CSV after a ``results.csv:`` line (what
``fedmeta run`` writes to ``results.csv``; on a SuperLink, ``flwr log RUN_ID`` gets it back);
``fedmeta.simulate`` runs ``run_federation`` in its own ServerApp to also collect the
records and the final meta-model.

Under ``flwr run``, ``federation.num_devices = "auto"`` (the default there) sizes the fleet
to the federation found (``fedmeta.app.sizing``). A run that fedmeta refuses or that fails
(bad run config, a federation of another size, devices that never answer) ends with one
``fedmeta: ...`` ERROR line and no traceback, and the ServerApp fails: the run's status is
``finished:failed`` and Flower's ServerApp process exits with status 1 (docs/deployment.md
has the codes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context
from flwr.app.exception import AppExitException
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.exit import ExitCode

from ..checkpoint import Checkpoint
from ..config import Config, from_flat, resolve_device
from ..edge.versions import publish as publish_version
from ..errors import ConfigError, FedmetaError
from ..federated import FEDERATED_ALGORITHMS
from ..fleet import FleetRun, enabled as fleet_enabled
from ..meta import MetaTrainer, build_learner
from ..models import build_model
from ..results import Row, final_table, table
from ..server_state import ServerState, rng_states, set_rng_states
from ..tasks.factory import build_tasks
from .client_app import MODEL, MODEL_KWARGS
from .outcome import DeviceReports, outcome_error
from .records import config_record, to_record
from .privacy_wrap import make_strategy
from .sizing import fit_to_federation, is_auto

logger = logging.getLogger("flwr.fedmeta")

app = ServerApp()

RESULTS_CSV = "results.csv:"  # heads the tidy table in the log, as `fedmeta run` writes it


def check_resumable(cfg: Config) -> None:
    """Refuse to resume a private run (before Ray starts, where ``simulate`` calls it)."""
    if cfg.privacy.enabled:
        raise ConfigError("privacy", "on", "off for --resume: a private run's accountant "
                          "state is not checkpointed, so its epsilon would be wrong; start "
                          "the run again")


def run_federation(grid: Grid, cfg: Config, report: Callable[[Row], None],
                   state_path: Path | None = None, resume: ServerState | None = None,
                   partitions: dict[int, int] | None = None,
                   reports: DeviceReports | None = None) -> Checkpoint:
    """Meta-train ``cfg``'s fleet over ``grid``; return the final meta-model.

    With ``state_path``, the server state is saved there after every round; with
    ``resume``, the run continues after ``resume.round`` (``report`` gets the new rows only);
    ``partitions`` (node id -> partition id), if already discovered, are not asked again;
    ``reports`` collects the devices' rejected and missing replies (``outcome``). With
    ``federation.publish_dir``, the meta-model is published there (``fedmeta.edge.versions``)
    after every evaluated round (round 0 included), as version ``round``.
    """
    fed = cfg.federation
    algorithm = FEDERATED_ALGORITHMS[fed.algorithm]
    tasks = build_tasks(cfg.task, seed=cfg.train.seed,
                        fleet=(cfg.federation.num_devices, cfg.federation.num_held_out))
    learner_kwargs = {"inner_lr": cfg.meta.inner_lr, "inner_steps": cfg.meta.inner_steps,
                      "eval_steps": cfg.meta.eval_steps}
    with torch.random.fork_rng(devices=[]):  # the initial model from the seed, no side effect
        torch.manual_seed(cfg.train.seed)  # (and the modules a learner adds: relation, snail)
        model = build_model(tasks.model, **tasks.model_kwargs)
        learner = build_learner(algorithm.learner, model, precision=cfg.train.precision,
                                batched=cfg.train.batched, **learner_kwargs)
    trainer = MetaTrainer(learner, fed.server_lr, fed.server_optimizer,
                          resolve_device(cfg.train.device))
    rows: list[Row] = []
    if resume is not None:
        check_resumable(cfg)
        with torch.no_grad():
            for name, value in trainer.params.items():
                value.copy_(resume.params[name])
        trainer.optimizer.load_state_dict(resume.optimizer)
        set_rng_states(resume.rng)
        rows = list(resume.rows)

    fleet = FleetRun.from_config(cfg, learner, tasks.train.sample(np.random.default_rng(0))) \
        if fleet_enabled(cfg) else None
    if fleet is not None and rows:  # resumed: the clock goes on from the last round
        fleet.elapsed_s = max(r.extra.get("sim_time_s", 0.0) for r in rows)

    def record(row: Row) -> None:
        if fleet is not None and row.source == "train":  # the round's simulated clock
            row = dataclasses.replace(row, extra={**row.extra, **fleet.columns(row.round)})
        rows.append(row)
        report(row)

    def publish(server_round: int) -> None:  # for edge front-ends (fedmeta.edge)
        if fed.publish_dir:
            publish_version(Checkpoint(algorithm.learner, tasks.model, tasks.model_kwargs,
                                       learner_kwargs, trainer.params, tasks.info),
                            fed.publish_dir, server_round, round=server_round,
                            algorithm=fed.algorithm)
            logger.info("published the meta-model of round %d to %s", server_round,
                        fed.publish_dir)

    def end_of_round(server_round: int) -> None:
        if state_path is not None:
            ServerState(server_round, cfg.to_dict(), trainer.params,
                        trainer.optimizer.state_dict(), rng_states(), rows).save(state_path)
        if strategy.evaluates(server_round, fed.rounds):
            publish(server_round)

    round_config = config_record(cfg, **{MODEL: tasks.model, MODEL_KWARGS: json.dumps(
        tasks.model_kwargs, sort_keys=True)})
    strategy = make_strategy(cfg, trainer, record)
    strategy.fleet = fleet
    strategy.partitions = dict(partitions or {})
    if reports is not None:
        strategy.device_reports = reports
    strategy.start(
        grid, to_record(trainer.params), num_rounds=fed.rounds, timeout=fed.round_timeout,
        train_config=round_config,
        evaluate_config=config_record(cfg, **{MODEL: tasks.model,
                                              MODEL_KWARGS: round_config[MODEL_KWARGS]}),
        first_round=1 if resume is None else resume.round + 1, end_of_round=end_of_round)
    return Checkpoint(algorithm.learner, tasks.model, tasks.model_kwargs, learner_kwargs,
                      trainer.params, tasks.info)


class ServerAppFailed(AppExitException):
    """A fedmeta error that ends a ``flwr run``: Flower marks the run failed and exits the
    ServerApp process with status 1 (``Exit Code: 201`` in its log)."""

    exit_code = ExitCode.SERVERAPP_EXCEPTION


class _NoTraceback(logging.Filter):
    """Flower logs a ServerApp's exception with its traceback; ours was said in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ServerAppFailed):
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("flwr").addFilter(_NoTraceback())


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run``: the run config is our config, flattened; results go to the log. A
    fedmeta error is one ERROR line, and the run fails (``ServerAppFailed``)."""
    try:
        _run(grid, context)
    except FedmetaError as exc:
        logger.error("fedmeta: %s", exc)
        raise ServerAppFailed(str(exc)) from None


def _run(grid: Grid, context: Context) -> None:
    flat, partitions = dict(context.run_config), None
    if is_auto(flat):
        flat, partitions = fit_to_federation(grid, flat)
    cfg = from_flat(flat)
    publish = cfg.federation.publish_dir
    if publish and not Path(publish).is_absolute():
        raise ConfigError("federation.publish_dir", publish,
                          "an absolute path under flwr run (the ServerApp runs in a working "
                          "folder of Flower's choosing)")
    rows: list[Row] = []

    def report(row: Row) -> None:
        rows.append(row)
        logger.info("round %d %s: %d devices, %s, %d B down, %d B up", row.round, row.source,
                    row.devices, row.brief(), row.bytes_down, row.bytes_up)

    reports = DeviceReports()
    run_federation(grid, cfg, report, partitions=partitions, reports=reports)
    frame = table(rows)
    logger.info("%s on held-out devices:\n%s", cfg.federation.algorithm, final_table(frame))
    logger.info("%s\n%s", RESULTS_CSV, frame.to_csv(index=False, lineterminator="\n"))
    failure = outcome_error(rows, reports)
    if failure is not None:
        raise failure
