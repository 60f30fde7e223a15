"""Export a checkpoint's meta-model as a TorchScript program a device runs with torch alone.

``export(checkpoint, out)`` writes ``meta_model.pt`` (the scripted ``MetaModel``: the
meta-parameters and their adaptation), ``meta_model.json`` (what it was trained for and
how to call it) and ``adapt_on_device.py`` (a torch-only script that adapts it on a saved
episode and writes the predictions). Before saving, the program's forward pass is checked
against fedmeta's model on a probe input.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..errors import ConfigError, DataError
from ..meta.metasgd import LR_PREFIX
from . import device_script
from .program import Conv4Forward, MetaModel, MLPForward

PROGRAM, INFO, SCRIPT = "meta_model.pt", "meta_model.json", "adapt_on_device.py"
GRADIENT_LEARNERS = ("maml", "fomaml", "metasgd", "anil", "reptile", "joint",
                     "perfedavg-fo", "perfedavg-hf")


def input_shape(checkpoint: Checkpoint) -> tuple[int, ...]:
    """One input's shape: ``(in_features,)`` for the MLP, ``(channels, size, size)`` for
    Conv4 (28x28 unless its ``image_size`` says otherwise)."""
    if checkpoint.model == "mlp":
        return (int(checkpoint.model_kwargs.get("in_features", 1)),)
    size = int(checkpoint.model_kwargs.get("image_size", 28))
    return (int(checkpoint.model_kwargs.get("in_channels", 1)), size, size)


def head_only_model(checkpoint: Checkpoint | str | Path, fmt: str
                    ) -> tuple[Checkpoint, torch.nn.Module]:
    """The checkpoint and its float32 model, for an export whose device adapts the head only
    at one learning rate (``fmt``: the ``--format`` named in errors)."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint.load(checkpoint)
    allowed = [a for a in GRADIENT_LEARNERS if a != "metasgd"]
    if checkpoint.algorithm not in allowed:
        raise ConfigError("checkpoint algorithm", checkpoint.algorithm,
                          f"for --format {fmt} (head-only adaptation at one learning rate) "
                          f"one of {allowed}; Meta-SGD's learned rates: --format torchscript")
    if checkpoint.model not in ("mlp", "conv4"):
        raise ConfigError("checkpoint model", checkpoint.model, "one of ['conv4', 'mlp']")
    model = checkpoint.learner().model
    model.load_state_dict({k: v.float() for k, v in checkpoint.params.items()
                           if not k.startswith(LR_PREFIX)})
    return checkpoint, model


def write_head(out: Path, name: str, checkpoint: Checkpoint, head: torch.nn.Linear
               ) -> dict[str, Any]:
    """Save the meta-learned head and its adaptation settings (``out / name``, npz) for a
    head-only device script; return the description fields every such export shares."""
    weight, bias = head.weight.detach(), head.bias.detach()
    kwargs = checkpoint.learner_kwargs
    lr = float(kwargs.get("inner_lr", 0.4))
    steps = int(kwargs.get("eval_steps") or kwargs.get("inner_steps", 1))
    np.savez(out / name, weight=weight.numpy(), bias=bias.numpy(), lr=np.float32(lr),
             steps=np.int64(steps))
    return {"algorithm": checkpoint.algorithm, "model": checkpoint.model,
            "model_kwargs": checkpoint.model_kwargs, "task": checkpoint.task,
            "input_shape": list(input_shape(checkpoint)), "feature_size": int(weight.shape[1]),
            "labels": "float32 targets, shape (n, outputs)" if checkpoint.model == "mlp"
            else "int64 class indices, shape (n,)",
            "exact_for": "anil" if checkpoint.algorithm == "anil" else
            f"anil (this {checkpoint.algorithm} meta-model was trained to adapt every "
            f"layer; head-only adaptation is an approximation of its adaptation)",
            "adaptation_steps": steps, "inner_lr": lr}


def meta_model(checkpoint: Checkpoint) -> MetaModel:
    """The (unscripted) program of ``checkpoint``: its meta-parameters, in the model's
    parameter order, with the learner's adaptation."""
    if checkpoint.algorithm not in GRADIENT_LEARNERS:
        raise ConfigError("checkpoint algorithm", checkpoint.algorithm,
                          f"a learner that adapts by gradient steps: one of "
                          f"{list(GRADIENT_LEARNERS)}")
    nets = {"mlp": MLPForward, "conv4": Conv4Forward}
    if checkpoint.model not in nets:
        raise ConfigError("checkpoint model", checkpoint.model, f"one of {sorted(nets)}")
    names = [name for name, _ in checkpoint.learner().model.named_parameters()]
    theta = [checkpoint.params[name].float() for name in names]
    inner_lr = float(checkpoint.learner_kwargs.get("inner_lr", 0.4))
    lr = [checkpoint.params[LR_PREFIX + name].float() if checkpoint.algorithm == "metasgd"
          else torch.tensor(inner_lr) for name in names]
    adapted = [i for i, name in enumerate(names)
               if checkpoint.algorithm != "anil" or name.startswith("head.")]
    kwargs = checkpoint.learner_kwargs
    steps = int(kwargs.get("eval_steps") or kwargs.get("inner_steps", 1))
    return MetaModel(nets[checkpoint.model](), theta, lr, adapted, steps,
                     regression=checkpoint.model == "mlp")


def script(checkpoint: Checkpoint) -> torch.jit.ScriptModule:
    """``meta_model(checkpoint)`` compiled by TorchScript.

    TorchScript is deprecated in torch 2.13 in favour of ``torch.export``, which cannot yet
    capture an inner loop that calls ``torch.autograd.grad``; its programs still load and
    run in torch (and LibTorch), so its deprecation warning is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                category=DeprecationWarning)
        return torch.jit.script(meta_model(checkpoint))


def _check_forward(program: torch.jit.ScriptModule, checkpoint: Checkpoint) -> None:
    """The program's forward pass equals fedmeta's model's on a probe input."""
    learner = checkpoint.learner()
    probe = torch.linspace(-1, 1, 5 * int(torch.tensor(input_shape(checkpoint)).prod()))
    probe = probe.reshape(5, *input_shape(checkpoint))
    theirs = learner.predict(dict(checkpoint.params), probe)
    ours = program.predict(program.theta, probe)
    if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        raise DataError(f"the exported {checkpoint.model} does not compute what fedmeta's "
                        f"does (max difference {float((ours - theirs).abs().max()):.3g})")


def export(checkpoint: Checkpoint | str | Path, out: str | Path) -> dict[str, Any]:
    """Write the program, its description and the device script to ``out``; return the
    description."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint.load(checkpoint)
    program = script(checkpoint)
    _check_forward(program, checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    program.save(str(out / PROGRAM))
    info = {"format": "fedmeta-edge/1", "program": PROGRAM, "algorithm": checkpoint.algorithm,
            "model": checkpoint.model, "model_kwargs": checkpoint.model_kwargs,
            "task": checkpoint.task, "input_shape": list(input_shape(checkpoint)),
            "labels": "float targets, shape (n, 1)" if checkpoint.model == "mlp"
            else "int64 class indices, shape (n,)",
            "adaptation_steps": int(program.steps),
            "inner_lr": float(checkpoint.learner_kwargs.get("inner_lr", 0.4)),
            "call": "torch.jit.load(program)(support_x, support_y, query_x) -> query outputs; "
                    ".adapt(support_x, support_y, steps) -> fast weights; "
                    ".predict(weights, x) -> outputs",
            "program_bytes": (out / PROGRAM).stat().st_size}
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    shutil.copyfile(device_script.__file__, out / SCRIPT)
    return info
