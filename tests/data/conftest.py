"""Fixtures of the miniature dataset layouts (:mod:`miniatures`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from convunext.data.volumes import write_phantom_dataset
from miniatures import make_chase_db1, make_drive, make_folder, make_glas, make_hrf, make_stare, snapshot


@pytest.fixture(scope="session")
def mini_drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_drive(tmp_path_factory.mktemp("mini_drive"))


@pytest.fixture(scope="session")
def mini_glas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_glas(tmp_path_factory.mktemp("mini_glas"))


@pytest.fixture(scope="session")
def mini_hrf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hrf(tmp_path_factory.mktemp("mini_hrf"))


@pytest.fixture(scope="session")
def mini_stare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stare(tmp_path_factory.mktemp("mini_stare"))


@pytest.fixture(scope="session")
def mini_chase_db1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chase_db1(tmp_path_factory.mktemp("mini_chase_db1"))


@pytest.fixture(scope="session")
def mini_volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five CT phantoms (and a test case) in the Decathlon layout: the ``volumes`` dataset's root."""
    return write_phantom_dataset(tmp_path_factory.mktemp("mini_volumes") / "Task99_Phantom", cases=5, test_cases=1)


@pytest.fixture
def folder_factory():
    """:func:`make_folder`, as a fixture."""
    return make_folder


@pytest.fixture
def tree_snapshot():
    """:func:`snapshot`, as a fixture."""
    return snapshot


@pytest.fixture(scope="session")
def mini_mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding miniature ``DRIVE/``, ``STARE/`` and ``HRF/`` side by side: the ``mixed`` dataset's root."""
    root = tmp_path_factory.mktemp("mini_mixed")
    for make in (make_drive, make_stare, make_hrf):
        make(root)
    return root
