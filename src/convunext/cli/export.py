"""``convunext export CHECKPOINT --format onnx|torchscript --out FILE``: a deployable model file, verified."""

from __future__ import annotations

import argparse

from ..checkpoint import load_checkpoint
from ..inference.export import DEFAULT_OPSET, EXPORT_FORMATS, export_model


def run(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model
    report = export_model(model, args.format, args.out, verify=not args.no_verify, opset=args.opset)
    channels = len(checkpoint.mean)
    classes = len(checkpoint.class_names)
    detail = f"opset {args.opset}, " if args.format == "onnx" else ""
    print(
        f"wrote {report.path} ({args.format}, {detail}input 'image' N x {channels} x H x W float32, any N and "
        f"H, W >= {report.min_size} px; output 'logits' N x {classes} x H x W)"
    )
    runner = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
    for shape, diff, scale in zip(report.shapes, report.max_abs_diffs, report.max_abs_logits):
        print(
            f"verified with {runner} at {'x'.join(map(str, shape))}: max abs diff {diff:.2e} (max |logit| {scale:.3g})"
        )
    print(
        "inputs are normalised images: (pixel / 255 - mean) / std with "
        f"mean={list(checkpoint.mean)}, std={list(checkpoint.std)}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript (dynamic batch and image size) and verify it",
        description="Export a trained model with dynamic batch size, height and width (odd sizes included; each "
        "side at least 64 px for ConvUNeXt, 16 px for the baselines) and check the file against the eager model "
        "on random inputs of two sizes (onnxruntime for ONNX). ONNX needs the optional extra convunext[onnx].",
    )
    parser.add_argument("checkpoint", help="run folder (uses best, else last), CHECKPOINT.json or .safetensors")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="onnx or torchscript")
    parser.add_argument(
        "--out", required=True, help="output file, e.g. model.onnx or model.pt (missing parent folders are created)"
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-verify", action="store_true", help="skip the check against the eager model")
    parser.set_defaults(func=run)
