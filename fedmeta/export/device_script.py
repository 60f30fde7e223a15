"""Adapt an exported meta-model on one episode and predict, with torch alone (no fedmeta).

    python adapt_on_device.py meta_model.pt episode.pt predictions.pt [--steps K]

``episode.pt`` holds a dict of tensors ``support_x``, ``support_y`` and ``query_x`` (see
``meta_model.json`` for shapes and label types); ``predictions.pt`` receives the query
outputs (class scores, or regression values) after adaptation on the support set.
"""

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("program", help="meta_model.pt (TorchScript)")
    parser.add_argument("episode", help="a torch file: {support_x, support_y, query_x}")
    parser.add_argument("predictions", help="where to write the query outputs")
    parser.add_argument("--steps", type=int, help="adaptation steps (default: the exported)")
    args = parser.parse_args()
    model = torch.jit.load(args.program, map_location="cpu")
    episode = torch.load(args.episode, map_location="cpu", weights_only=True)
    steps = model.steps if args.steps is None else args.steps
    weights = model.adapt(episode["support_x"], episode["support_y"], steps)
    with torch.no_grad():
        outputs = model.predict(weights, episode["query_x"])
    torch.save(outputs, args.predictions)
    print(f"adapted {steps} steps on {len(episode['support_x'])} support examples; "
          f"wrote {tuple(outputs.shape)} outputs to {args.predictions}")


if __name__ == "__main__":
    main()
