"""``fedmeta export``: the meta-model for devices (ONNX or LiteRT/TFLite with head-only
adaptation in numpy, or the legacy TorchScript program), and whether it fits the fleet's
device profiles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FORMATS = ("onnx", "tflite", "torchscript")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fedmeta export``."""
    p = sub.add_parser(
        "export", help="export a checkpoint for devices (ONNX, TFLite or TorchScript), or --fit",
        description="Write to --out, for --format onnx (default; needs the edge extra): "
                    "body.onnx and head.onnx (captured by torch.export), head.npz (the "
                    "meta-learned head) and adapt_onnx.py, which adapts the head on a support "
                    "set with numpy and onnxruntime alone (ANIL-style; the support features "
                    "computed once). --format tflite (needs the litert extra): body.tflite "
                    "(litert-torch; static support and query batches), head.npz and "
                    "adapt_tflite.py, the same adaptation with numpy and the LiteRT "
                    "interpreter. --format torchscript (legacy): meta_model.pt, a program "
                    "that adapts every adapted layer with torch alone, and adapt_on_device.py. "
                    "With --fit, print instead whether the model fits each device profile's "
                    "memory and its adaptation and query latency there. See "
                    "docs/deployment.md.")
    p.add_argument("--checkpoint", required=True, type=Path, metavar="FILE",
                   help="a checkpoint written by fedmeta train or fedmeta run")
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (not with --fit)")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx (default), tflite or torchscript (legacy: deprecated by "
                        "PyTorch)")
    p.add_argument("--fit", action="store_true",
                   help="print the fit table for the built-in device profiles instead")
    p.add_argument("--profiles-file", type=Path, metavar="TOML",
                   help="with --fit: more or overriding device profiles (docs/fleet.md)")
    p.add_argument("--support", type=int, metavar="N",
                   help="with --fit or --format tflite: support-set size (default: the "
                        "checkpoint's task)")
    p.add_argument("--query", type=int, metavar="N",
                   help="with --fit or --format tflite: query batch size (default: the "
                        "checkpoint's task)")
    p.set_defaults(func=run)


def _episode_sizes(task: dict, support: int | None, query: int | None) -> tuple[int, int]:
    from ..errors import ConfigError

    ways = int(task.get("n_way", 1))
    sizes = []
    for name, given, key in (("--support", support, "k_shot"), ("--query", query, "q_query")):
        if given is None:
            if key not in task:
                raise ConfigError(name, None, f"a number: the checkpoint's task has no {key}")
            given = ways * int(task[key])
        if given < 1:
            raise ConfigError(name, given, "an integer >= 1")
        sizes.append(given)
    return sizes[0], sizes[1]


def fit(args: argparse.Namespace) -> int:
    """Print the fit table of the checkpoint's model on every profile."""
    from ..checkpoint import Checkpoint
    from ..errors import ConfigError
    from ..export.export import input_shape
    from ..export.fit import fit_table, markdown
    from ..fleet.profiles import PROFILES, load_profiles

    if args.out is not None:
        raise ConfigError("--out", str(args.out), "nothing with --fit (it prints a table)")
    checkpoint = Checkpoint.load(args.checkpoint)
    if checkpoint.model not in ("mlp", "conv4"):
        raise ConfigError("checkpoint model", checkpoint.model, "one of ['conv4', 'mlp']")
    support, query = _episode_sizes(checkpoint.task, args.support, args.query)
    kwargs = checkpoint.learner_kwargs
    steps = int(kwargs.get("eval_steps") or kwargs.get("inner_steps", 1))
    profiles = load_profiles(args.profiles_file) if args.profiles_file else PROFILES
    model = checkpoint.learner().model
    print(f"{checkpoint.model} {checkpoint.model_kwargs}: {support} support, {query} query, "
          f"{steps} adaptation steps\n")
    print(markdown(fit_table(model, input_shape(checkpoint), support, query, steps,
                             profiles)), end="")
    return 0


def export_tflite(args: argparse.Namespace) -> int:
    """Export the body to LiteRT for the episode sizes asked (or the checkpoint's task)."""
    from ..checkpoint import Checkpoint
    from ..errors import ConfigError

    try:
        from ..export.tflite_export import export_tflite as export
    except ImportError as exc:  # ai_edge_litert, imported by the device script
        raise ConfigError("--format", "tflite", f"an environment with the litert extra: "
                          f"pip install 'fedmeta[litert]' ({exc})") from None
    checkpoint = Checkpoint.load(args.checkpoint)
    support, query = _episode_sizes(checkpoint.task, args.support, args.query)
    print(json.dumps(export(checkpoint, args.out, support, query), indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    """Export and print the description, or print the fit table."""
    from ..errors import ConfigError

    if args.fit:
        return fit(args)
    sizes = () if args.format == "tflite" else (("--support", args.support),
                                                 ("--query", args.query))
    for flag, value in (("--profiles-file", args.profiles_file), *sizes):
        if value is not None:
            raise ConfigError(flag, str(value), "nothing without --fit or --format tflite")
    if args.out is None:
        raise ConfigError("--out", None, "an output folder (or --fit)")
    if args.format == "tflite":
        return export_tflite(args)
    if args.format == "onnx":
        try:
            from ..export.onnx_export import export_onnx as export
        except ImportError as exc:  # onnxruntime, imported by the device script
            raise ConfigError("--format", "onnx", f"an environment with the edge extra: "
                              f"pip install 'fedmeta[edge]' ({exc})") from None
    else:
        from ..export import export
    print(json.dumps(export(args.checkpoint, args.out), indent=2))
    return 0
