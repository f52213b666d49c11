"""Shared fixtures: where the real datasets and the large reference fixtures are.

Real datasets: ``CONVUNEXT_DATA``, else ``<repo>/../shared/data``. Large fixtures: ``<repo>/../shared/fixtures``.
A user's fresh clone has neither: tests that need them are skipped there. In CI (``CI=true``) a missing copy is a
failure, except in the fresh-clone run of ``.ci/run``, which sets ``CONVUNEXT_SHARED_OPTIONAL=1`` to prove that
everything else passes without ``../shared``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


def data_root_path() -> Path:
    """The folder holding the real copies of DRIVE and STARE (and GlaS/HRF when available)."""
    value = os.environ.get("CONVUNEXT_DATA")
    return Path(value).expanduser() if value else REPO.parent / "shared" / "data"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def running_in_ci() -> bool:
    return _flag("CI")


def missing_shared(message: str) -> None:
    """Skip the calling test for a missing ``../shared`` copy; fail instead in CI unless it is a fresh-clone run."""
    if running_in_ci() and not _flag("CONVUNEXT_SHARED_OPTIONAL"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real-data root (it may not exist on a developer machine)."""
    return data_root_path()


def shared_copy(data_root: Path, folder: str) -> Path:
    """The real copy ``data_root / folder`` of a dataset that ``../shared/data`` holds. In CI (``CI=true``) a
    missing copy is a failure, elsewhere a skip."""
    root = data_root / folder
    if not root.is_dir():
        missing_shared(f"real {folder} copy not found at {root} (set CONVUNEXT_DATA)")
    return root


@pytest.fixture(scope="session")
def drive_root(data_root: Path) -> Path:
    """The real DRIVE copy (:func:`shared_copy`)."""
    return shared_copy(data_root, "DRIVE")


@pytest.fixture(scope="session")
def stare_root(data_root: Path) -> Path:
    """The real STARE copy (:func:`shared_copy`)."""
    return shared_copy(data_root, "STARE")


@pytest.fixture(scope="session")
def hrf_root(data_root: Path) -> Path:
    """The real HRF copy (:func:`shared_copy`)."""
    return shared_copy(data_root, "HRF")


@pytest.fixture(scope="session")
def hippocampus_root(data_root: Path) -> Path:
    """The real Decathlon hippocampus sample (24 MR volumes, MSD layout; :func:`shared_copy`)."""
    return shared_copy(data_root, "Task04_Hippocampus-sample")


@pytest.fixture(scope="session")
def dicom_series_root(data_root: Path) -> Path:
    """The real DICOM sample: one MR series of 32 slices whose file names do not sort in slice order."""
    return shared_copy(data_root, "DICOM-sample")


@pytest.fixture(scope="session")
def glas_root(data_root: Path) -> Path:
    """The real GlaS copy; ``../shared/data`` holds none, so tests using it are skipped when it is absent."""
    root = data_root / "GlaS"
    if not root.is_dir():
        pytest.skip(f"real GlaS copy not found at {root}")
    return root


REFERENCE_FIXTURES = {
    8: FIXTURES / "official_convunext_parity_w8.pt",  # vendored: parity is proven on every clone
    32: SHARED_FIXTURES / "official_convunext_parity.pt",  # the paper's width, 14 MB, from ../shared
}


@pytest.fixture(scope="session", params=sorted(REFERENCE_FIXTURES), ids=lambda width: f"width{width}")
def reference(request: pytest.FixtureRequest) -> dict:
    """The authors' reference ConvUNeXt (``state_dict``, ``inputs``, ``outputs``, ``config``) at widths 8 and 32."""
    import torch

    path = REFERENCE_FIXTURES[request.param]
    if not path.exists():
        missing_shared(f"parity fixture not found at {path}")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module: tiny models and many small ops run faster on one, and the CI CPU is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def set_kernels() -> Iterator[Callable[[str], object]]:
    """``set_kernels(mode)``: the ``kernels`` setting of :mod:`convunext.runtime` (``auto``, ``compiled`` or
    ``reference``), restored afterwards."""
    from convunext import runtime

    before = runtime.settings().kernels
    yield lambda mode: runtime.configure(kernels=mode)  # type: ignore[arg-type]
    runtime.configure(kernels=before)
