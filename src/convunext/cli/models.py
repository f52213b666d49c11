"""``convunext models``: every registered model with its parameters, GFLOPs and size relative to UNet; with
``--variants``, the named ConvUNeXt configurations of the ablation studies."""

from __future__ import annotations

import argparse

from ..errors import ConvUNeXtError
from ..models import list_models, list_variants
from ..models.cost import model_cost
from ..models.variants import arguments_text
from ..pretrained import list_pretrained
from ..utils.table import markdown_table


def model_summary(size: int = 480, in_channels: int = 3, num_classes: int = 2) -> list[dict[str, object]]:
    """One row per registered model: ``name``, ``params``, ``gflops`` (one ``in_channels x size x size`` image)
    and ``params_vs_unet`` (its parameters over UNet's at the same arguments)."""
    rows = []
    for name in list_models():
        params, gflops = model_cost(name, size, in_channels=in_channels, num_classes=num_classes)
        rows.append({"name": name, "params": params, "gflops": gflops})
    unet_params = next((row["params"] for row in rows if row["name"] == "unet"), None)
    for row in rows:
        row["params_vs_unet"] = row["params"] / unet_params if unet_params else float("nan")
    return rows


def variants_table(size: int = 480, in_channels: int = 3, num_classes: int = 2) -> str:
    """The registered variants (the ablation studies' models): what they change and their computed cost."""
    rows = []
    for name in list_variants():
        params, gflops = model_cost(name, size, in_channels=in_channels, num_classes=num_classes)
        rows.append([name, arguments_text(name), f"{params:,}", f"{gflops:.1f}"])
    headers = ["variant", "arguments (vs convunext)", "params", f"GFLOPs ({in_channels}x{size}x{size})"]
    return markdown_table(headers, rows)


def pretrained_table() -> str:
    """The shipped pretrained models: name, architecture, task, data, test metrics, selection and terms."""
    rows = []
    for card in list_pretrained():
        metrics = "; ".join(
            (f"{test.dataset}: " if len(card.tests) > 1 else "")
            + ", ".join(f"{key} {value:.4f}" for key, value in test.metrics.items())
            for test in card.tests
        )
        rows.append([card.name, card.model, card.task, card.data, metrics, card.selection, card.terms])
    headers = ["name", "model", "task", "data", "test metrics", "chosen as", "terms of use"]
    return markdown_table(headers, rows)


MIN_SIZE = 16
"""The smallest image side every registered model takes: each halves it four times."""


def run(args: argparse.Namespace) -> int:
    if args.size < MIN_SIZE:  # the channel and class counts are checked by the models themselves
        raise ConvUNeXtError(
            f"--size {args.size}: expected an image side of at least {MIN_SIZE} pixels (every model halves it four "
            "times)"
        )
    if args.pretrained:
        print(pretrained_table())
        return 0
    if args.variants:
        print(variants_table(args.size, args.in_channels, args.num_classes))
        return 0
    rows = model_summary(args.size, args.in_channels, args.num_classes)
    headers = ["model", "params", f"GFLOPs ({args.in_channels}x{args.size}x{args.size})", "params / UNet"]
    table = [[r["name"], f"{r['params']:,}", f"{r['gflops']:.1f}", f"{r['params_vs_unet']:.2f}"] for r in rows]
    print(markdown_table(headers, table))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the registered models with parameters and GFLOPs")
    parser.add_argument("--size", type=int, default=480, help="image side for the GFLOPs column (default 480)")
    parser.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    parser.add_argument("--num-classes", type=int, default=2, help="output classes, background included (default 2)")
    parser.add_argument(
        "--pretrained", action="store_true", help="list the pretrained models shipped with the package instead"
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="list the named ConvUNeXt variants of `convunext ablate` (each trainable with `convunext train --model`)",
    )
    parser.set_defaults(func=run)
