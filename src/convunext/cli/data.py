"""``convunext data``: prepare a downloaded dataset, or describe one.

* ``convunext data prepare NAME SOURCE OUT`` — convert a DRIVE / GlaS / HRF / STARE / CHASE_DB1 download (folder,
  .zip or .tar), or a folder dataset, into the folder layout with ``dataset.json``; ``volumes``: a Decathlon task (or
  an nnU-Net / plain folder of NIfTI volumes) into nnU-Net v2's raw layout.
* ``convunext data info NAME [ROOT]`` — counts per split, classes, mean/std; ``--validate`` decodes every file
  and exits 2 when any split is unavailable or holds a bad file (one line per split, then one error line).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..data import SPLITS, dataset_info, dataset_spec, list_datasets, open_dataset, prepare_dataset
from ..data.prepare import preparable_datasets
from ..data.volumes import VolumeSettings, VolumeSliceDataset
from ..errors import ConvUNeXtError


def _format_stats(values: tuple[float, ...] | list[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def run_prepare(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    meta = prepare_dataset(args.name, args.source, args.out, progress=not args.quiet and sys.stderr.isatty())
    counts = meta["counts"]
    print(f"prepared {meta['name']} into {args.out} in {time.perf_counter() - start:.1f} s")
    splits = f"train {counts['train']}, val {counts['val']}, test {counts['test']}"
    if "channel_names" in meta:  # volumes, in nnU-Net v2's layout
        print(f"  volumes: {splits}" + (f"; {counts['unlabelled']} unlabelled" if counts["unlabelled"] else ""))
        print(f"  classes: {', '.join(meta['labels'])}; channels: {', '.join(meta['channel_names'].values())}")
        print(f"  train on it with: convunext train volumes --data-root {args.out}")
        return 0
    print(f"  images: {splits}")
    print(f"  classes: {', '.join(meta['class_names'])}; field of view: {'yes' if meta['has_fov'] else 'no'}")
    print(f"  mean {_format_stats(meta['mean'])}, std {_format_stats(meta['std'])}")
    preset = dataset_spec(args.name).preset
    preset_argument = f"{preset} " if preset else ""
    print(f"  train on it with: convunext train {preset_argument}--data folder --data-root {args.out}")
    return 0


def _count(dataset: Any) -> str:
    """``"20 images"``; for the slices of volumes ``"16 volumes, 562 slices (+ 12 foreground slices a training
    epoch adds)"``."""
    if not isinstance(dataset, VolumeSliceDataset):
        return f"{len(dataset)} images"
    extra = (
        f" (+ {dataset.extra_foreground} foreground slices a training epoch adds)" if dataset.extra_foreground else ""
    )
    volumes = len(dataset.cases)
    return f"{volumes} volume{'s' if volumes != 1 else ''}, {len(dataset.slices)} slices{extra}"


def run_info(args: argparse.Namespace) -> int:
    name = args.name.lower()
    if not dataset_spec(name).has_files and args.root is not None:
        raise ConvUNeXtError(f"the {name} dataset takes no ROOT")
    info = dataset_info(name, args.root)
    print(f"dataset: {info.name}")
    print(f"  classes: {', '.join(info.class_names)}; input channels: {info.in_channels}; FOV: {info.has_fov}")
    if info.volume is None:
        print(f"  mean {_format_stats(info.mean)}, std {_format_stats(info.std)}")
    else:
        settings = VolumeSettings.from_dict(info.volume)
        spacing = " x ".join(f"{value:g}" for value in settings.spacing)
        print(
            f"  slices along axis {settings.slice_axis} (median spacing {spacing} mm), {settings.context} per input; "
            f"intensities: {'; '.join(norm.describe() for norm in settings.normalizations)}"
        )
    unavailable: list[ConvUNeXtError] = []
    problems = []
    for split in SPLITS:
        try:
            dataset = open_dataset(name, args.root, split)
        except ConvUNeXtError as error:
            unavailable.append(error)
            problems.append(f"{split!r} (unavailable)")
            print(f"  {split}: unavailable ({error})")
            continue
        if args.validate:
            try:
                for index in range(len(dataset)):
                    dataset[index]
            except ConvUNeXtError as error:
                problems.append(f"{split!r} (bad file)")
                print(f"  {split}: invalid ({error})")
                continue
        print(f"  {split}: {_count(dataset)}" + (" (all decoded)" if args.validate else ""))
    if len(unavailable) == len(SPLITS):
        raise unavailable[0]
    if args.validate and problems:
        where = args.root if args.root is not None else f"dataset {name!r}"
        plural = "s" if len(problems) > 1 else ""
        raise ConvUNeXtError(f"{where}: validation failed for split{plural} {', '.join(problems)} (details above)")
    return 0


def _datasets_epilog() -> str:
    """Every registered dataset with its one-line description, for ``convunext data --help``."""
    names = list_datasets()
    width = max(map(len, names))
    return "datasets:\n" + "\n".join(f"  {name:<{width}}  {dataset_spec(name).description}" for name in names)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="prepare a downloaded dataset, or describe one",
        epilog=_datasets_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION")

    preparable = preparable_datasets()
    downloads = "/".join(dataset_spec(name).title for name in preparable if dataset_spec(name).folder_name)
    prepare = commands.add_parser(
        "prepare",
        help=f"convert a {downloads} download (folder, .zip or .tar) into the folder layout, or a volume dataset "
        "into nnU-Net v2's",
        description="Convert a dataset download into images/, masks/, fov/, splits.json and dataset.json "
        "(lossless PNG; masks 0/255 or class ids). NAME volumes: a Decathlon task (folder or .tar), an nnU-Net v2 "
        "or images/ + labels/ folder of NIfTI volumes into nnU-Net v2's raw layout (imagesTr/CASE_0000.nii.gz, one "
        "file per channel; labelsTr/; splits.json; dataset.json), every case checked. The output is built in "
        "OUT.partial-<pid> next to OUT and renamed to OUT once complete; nothing else is written.",
    )
    prepare.add_argument("name", choices=preparable, metavar="NAME", help=f"one of {', '.join(preparable)}")
    prepare.add_argument("source", help="the downloaded folder, .zip or .tar")
    prepare.add_argument("out", help="output folder (must not exist or be empty)")
    prepare.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(func=run_prepare)

    info = commands.add_parser("info", help="counts per split, classes and mean/std of a dataset")
    datasets = list_datasets()
    info.add_argument("name", choices=datasets, metavar="NAME", help=f"one of {', '.join(datasets)}")
    info.add_argument("root", nargs="?", default=None, help="the dataset folder (default: the data root)")
    info.add_argument(
        "--validate",
        action="store_true",
        help="decode every image, mask and FOV; exit 2 if any split is unavailable or has a bad file",
    )
    info.set_defaults(func=run_info)

    def no_action(args: argparse.Namespace) -> int:
        parser.print_help()
        return 1

    parser.set_defaults(func=no_action)
