"""Entry point of the ``convunext`` command.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed arguments, returns the exit code). User errors
(:class:`~convunext.errors.ConvUNeXtError`, ``ValueError`` from argument checks, missing files) and problems of
the machine (disk full, quota, file size limit, read-only file system, no permission) are printed as one line on
stderr with exit code 2, never as a traceback.

The command tunes its process as an application may: OpenMP's wait policy (:data:`convunext.runtime.OMP_WAIT_POLICY`
unless ``OMP_WAIT_POLICY`` is set) before the sub-commands import torch, then :func:`convunext.runtime.configure`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from .. import runtime
from ..errors import ConvUNeXtError
from ..utils.io import ENVIRONMENT_ERRNOS

SUBCOMMAND_MODULES = (
    "train",
    "evaluate",
    "calibrate",
    "compare",
    "cross_evaluate",
    "predict",
    "models",
    "data",
    "export",
    "benchmark",
    "reproduce",
    "ablate",
)


def one_line(error: BaseException) -> str:
    """The user-facing line of an error. Errors raised in DataLoader workers arrive re-wrapped with the worker's
    traceback in the message; their last line holds the original ``module.Class: message``."""
    text = str(error).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1].strip()
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def user_message(error: BaseException) -> str:
    """:func:`one_line`, plus the shipped pretrained models' names when a bare checkpoint name was not found."""
    from ..checkpoint import CheckpointNotFoundError
    from ..pretrained import available_names

    message = one_line(error)
    if isinstance(error, CheckpointNotFoundError) and error.is_bare_name:
        message += f" (shipped pretrained models: {available_names()})"
    return message


def build_parser() -> argparse.ArgumentParser:
    """The full ``convunext`` argument parser with every sub-command registered."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="convunext",
        description="ConvUNeXt and its baselines for 2D medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"convunext {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__package__}.{module_name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``convunext`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    os.environ.setdefault("OMP_WAIT_POLICY", runtime.OMP_WAIT_POLICY)  # read when torch loads: before the parser
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        runtime.configure()  # also refuses an invalid CONVUNEXT_* variable before any work
        return int(args.func(args) or 0)
    except (ConvUNeXtError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        print(f"convunext {args.command}: error: {user_message(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`convunext models | head -3`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail again
        return 128 + signal.SIGPIPE if hasattr(signal, "SIGPIPE") else 1
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"convunext {args.command}: error: {where}{ENVIRONMENT_ERRNOS[error.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convunext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
