"""The server: a ServerApp that meta-trains the fleet with the FedMeta strategy.

``flwr run .`` runs ``app`` with the run config of ``pyproject.toml`` (flattened
``section.field`` keys, overridable with ``--run-config``) and logs one line per round and
source and the final table; ``fedmeta.simulate`` runs ``run_federation`` in its own
ServerApp to also collect the records and the final meta-model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..checkpoint import Checkpoint
from ..config import Config, from_flat
from ..federated import FEDERATED_ALGORITHMS
from ..meta import MetaTrainer, build_learner
from ..models import build_model
from ..results import Row, final_table, table
from ..tasks.factory import build_tasks
from .client_app import MODEL, MODEL_KWARGS
from .records import config_record, to_record
from .privacy_wrap import make_strategy

logger = logging.getLogger("flwr.fedmeta")

app = ServerApp()


def run_federation(grid: Grid, cfg: Config, report: Callable[[Row], None]) -> Checkpoint:
    """Meta-train ``cfg``'s fleet over ``grid``; return the final meta-model."""
    fed = cfg.federation
    algorithm = FEDERATED_ALGORITHMS[fed.algorithm]
    tasks = build_tasks(cfg.task, seed=cfg.train.seed)
    learner_kwargs = {"inner_lr": cfg.meta.inner_lr, "inner_steps": cfg.meta.inner_steps,
                      "eval_steps": cfg.meta.eval_steps}
    with torch.random.fork_rng(devices=[]):  # the initial model from the seed, no side effect
        torch.manual_seed(cfg.train.seed)
        model = build_model(tasks.model, **tasks.model_kwargs)
    learner = build_learner(algorithm.learner, model, **learner_kwargs)
    trainer = MetaTrainer(learner, fed.server_lr, fed.server_optimizer)
    round_config = config_record(cfg, **{MODEL: tasks.model, MODEL_KWARGS: json.dumps(
        tasks.model_kwargs, sort_keys=True)})
    make_strategy(cfg, trainer, report).start(
        grid, to_record(trainer.params), num_rounds=fed.rounds, train_config=round_config,
        evaluate_config=config_record(cfg, **{MODEL: tasks.model,
                                              MODEL_KWARGS: round_config[MODEL_KWARGS]}))
    return Checkpoint(algorithm.learner, tasks.model, tasks.model_kwargs, learner_kwargs,
                      trainer.params, tasks.info)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run``: the run config is our config, flattened; results go to the log."""
    cfg = from_flat(context.run_config)
    rows: list[Row] = []

    def report(row: Row) -> None:
        rows.append(row)
        logger.info("round %d %s: %d devices, %s, %d B down, %d B up", row.round, row.source,
                    row.devices, row.brief(), row.bytes_down, row.bytes_up)

    run_federation(grid, cfg, report)
    logger.info("%s on held-out devices:\n%s", cfg.federation.algorithm,
                final_table(table(rows)))
