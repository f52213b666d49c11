"""``convunext export CHECKPOINT --format onnx|torchscript --out FILE``: a deployable model file, verified;
``convunext export RUN --pretrained NAME [--out FOLDER]``: the run's checkpoint as a pretrained model folder (default
``./pretrained/NAME/``), with a card stating its test metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import Checkpoint, load_checkpoint, read_checkpoint_meta
from ..errors import ConvUNeXtError
from ..inference.export import DEFAULT_OPSET, EXPORT_FORMATS, MIN_OPSET, export_model
from ..pretrained import publish_pretrained
from ..pretrained.publish import trained_datasets
from ..pretrained.store import check_name
from .options import add_checkpoint_argument, integer_at_least

PUBLISHED_DIR = "pretrained"
"""Where ``--pretrained NAME`` writes without ``--out``: ``./pretrained/NAME/``, never the installed package."""


def _test_reports(checkpoint: str, given: list[str] | None) -> list[Path]:
    """The test reports of a run: ``--test-report``, else its ``test/metrics.json`` (reproduce) and its
    ``eval-DATASET-test/metrics.json`` (convunext evaluate) on the data sets it was trained on (each source of a
    ``mixed`` run; a run evaluated on other data sets too has those left out)."""
    if given:
        return [Path(path) for path in given]
    meta, json_path = read_checkpoint_meta(checkpoint)  # the JSON only: publishing loads the weights once
    run_dir = json_path.parent
    trained_on = trained_datasets(meta)
    found = sorted(run_dir.glob("test/metrics.json")) + [
        path
        for path in sorted(run_dir.glob("eval-*-test/metrics.json"))
        if not trained_on or path.parent.name[len("eval-") : -len("-test")] in trained_on
    ]
    if not found or (not trained_on and len(found) > 1):
        what = "none" if not found else ", ".join(str(path) for path in found)
        raise ConvUNeXtError(f"{run_dir}: give --test-report (test reports found: {what})")
    return found


def _check_out(out: Path, checkpoint: Checkpoint) -> None:
    """Refuse an ``--out`` that is one of the exported checkpoint's own files."""
    if out.resolve() in (checkpoint.path.resolve(), checkpoint.weights_path.resolve()):
        raise ConvUNeXtError(f"{out}: is a file of the exported checkpoint; give another --out file")


def run(args: argparse.Namespace) -> int:
    if args.pretrained and (args.format or args.opset is not None):
        raise ConvUNeXtError(
            "give either --pretrained NAME or --format (a pretrained model folder, or an ONNX or TorchScript file), "
            "not both"
        )
    if args.opset is not None and args.format != "onnx":
        raise ConvUNeXtError("--opset applies to --format onnx only")
    if args.pretrained:
        check_name(args.pretrained)  # before the test report is looked for
        folder = Path(args.out) if args.out else Path(PUBLISHED_DIR) / args.pretrained
        path = publish_pretrained(
            args.checkpoint,
            args.pretrained,
            _test_reports(args.checkpoint, args.test_report),
            task=args.task,
            selection=args.selection,
            folder=folder,
        )
        print(
            f"wrote {folder}/: {path.stem}.safetensors (float16), {path.name} and README.md (the model card); "
            f"use it with `convunext predict {folder} IMAGE` or `from_pretrained({str(folder)!r})`"
        )
        return 0
    if not args.format or not args.out:
        raise ConvUNeXtError("convunext export: give --format and --out (or --pretrained NAME)")
    checkpoint = load_checkpoint(args.checkpoint)
    _check_out(Path(args.out), checkpoint)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    report = export_model(checkpoint.model, args.format, args.out, verify=not args.no_verify, opset=opset)
    channels = len(checkpoint.mean)
    classes = len(checkpoint.class_names)
    detail = f"opset {opset}, " if args.format == "onnx" else ""
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
        help="export a checkpoint to ONNX or TorchScript (dynamic batch and image size) and verify it, or as a "
        "pretrained model folder",
        description="Export a trained model with dynamic batch size, height and width (odd sizes included; each "
        "side at least 64 px for ConvUNeXt, 16 px for the baselines) and check the file against the eager model "
        "on random inputs of two sizes (onnxruntime for ONNX). ONNX needs the optional extra convunext[onnx]. "
        "With --pretrained NAME, write the checkpoint (float16), its card with its test metrics and a model card "
        "README.md into a pretrained model folder instead (--out, default ./pretrained/NAME/), which every "
        "command taking a checkpoint, from_pretrained and push_to_hub take.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("--format", choices=EXPORT_FORMATS, help="onnx or torchscript")
    parser.add_argument(
        "--out",
        help="output file, e.g. model.onnx or model.pt (missing parent folders are created; written only once "
        f"verified); with --pretrained, the model's folder (default {PUBLISHED_DIR}/NAME; new, empty or holding an "
        "earlier version of the model)",
    )
    parser.add_argument(
        "--opset",
        type=integer_at_least(MIN_OPSET, "an ONNX opset"),
        help=f"ONNX opset (default {DEFAULT_OPSET}; {MIN_OPSET} or later)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the check against the eager model")
    published = parser.add_argument_group("pretrained model")
    published.add_argument(
        "--pretrained", metavar="NAME", help="publish as the pretrained model NAME (letters, digits and '-')"
    )
    published.add_argument(
        "--test-report",
        nargs="+",
        metavar="METRICS_JSON",
        help="metrics.json of the checkpoint's test evaluation, one per data set it was trained on (default: "
        "RUN/test/, and RUN/eval-DATASET-test/ of each of its data sets)",
    )
    published.add_argument(
        "--task", default="retinal vessel segmentation of colour fundus photographs", help="one line for the card"
    )
    published.add_argument(
        "--selection",
        default="the run with the best validation Dice",
        help="one line for the card: how the run was chosen (on validation)",
    )
    parser.set_defaults(func=run)
