"""Starting a distributed run on this machine: ``convunext train --devices N`` runs its own command again under
PyTorch's elastic launcher, ``python -m torch.distributed.run --standalone --nproc_per_node N -m convunext train
...``, whose N workers join one process group (:func:`~convunext.training.distributed.context_from_environment`).

``torchrun --nproc_per_node N -m convunext train ...`` (or a multi-node ``--rdzv-endpoint`` launch) works directly
as well. ``optim.batch_size`` is per process: the global batch is ``batch_size x N``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import torch

from ..errors import ConvUNeXtError


def torchrun_command(processes: int, arguments: Sequence[str]) -> list[str]:
    """The single-node torchrun command that runs ``convunext train ARGUMENTS`` in ``processes`` processes (on a
    free port)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "convunext",
        "train",
        *arguments,
    ]


def launch_training(
    processes: int, arguments: Sequence[str], *, device: str = "auto", sync_batchnorm: bool = False
) -> int:
    """Run ``convunext train ARGUMENTS`` in ``processes`` processes of this machine (one per GPU, or CPU processes)
    with :func:`torchrun_command`, after checking that they can start; return the launcher's exit code.

    Args:
        processes: how many processes (``--devices``); on CUDA, at most one per CUDA device.
        arguments: the command's other arguments, as ``convunext train`` reads them (without ``--devices``).
        device: the run's ``train.device``: the workers use CUDA unless it is ``cpu`` or there is no CUDA.
        sync_batchnorm: the run's ``--sync-batchnorm``, which needs CUDA.

    Raises:
        ConvUNeXtError: ``processes`` is not positive, more than the CUDA devices, or this process is itself a
            torchrun worker; ``sync_batchnorm`` without CUDA.
    """
    if processes < 1:
        raise ConvUNeXtError(f"--devices {processes}: expected a positive number of processes")
    if "WORLD_SIZE" in os.environ:
        raise ConvUNeXtError("--devices starts torchrun itself; under torchrun, leave --devices out")
    on_cuda = device != "cpu" and torch.cuda.is_available()
    if sync_batchnorm and not on_cuda:
        raise ConvUNeXtError("--sync-batchnorm needs CUDA (PyTorch has no CPU implementation); leave it out on CPU")
    if on_cuda and processes > torch.cuda.device_count():
        raise ConvUNeXtError(
            f"--devices {processes} but this machine has {torch.cuda.device_count()} CUDA device(s); give at most "
            "that many"
        )
    command = torchrun_command(processes, arguments)
    print("launching: " + " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode
