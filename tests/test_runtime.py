"""Importing convunext changes nothing in the process; the settings come from the environment once; the process
tuning is :func:`convunext.runtime.configure`, which the command and the trainer call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from convunext import runtime
from convunext.training import trainer as trainer_module
from convunext.training.config import ExperimentConfig
from convunext.utils.threads import run_tasks

SETTINGS_ENVIRONMENT = (
    runtime.FUSED_PARALLELISM_ENV,
    runtime.MAX_IMAGE_PIXELS_ENV,
    runtime.KERNELS_ENV,
    "OMP_WAIT_POLICY",
)


def _python(code: str, **environment: str) -> dict:
    """Run ``code`` in a fresh interpreter (the settings' variables and ``OMP_WAIT_POLICY`` unset unless given);
    returns the JSON it prints last."""
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_ENVIRONMENT}
    env.update(environment, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture()
def restored_settings() -> Iterator[None]:
    """The settings, Pillow's guard and the thread count as they were before the test."""
    settings, pillow_guard, threads = runtime.settings(), Image.MAX_IMAGE_PIXELS, torch.get_num_threads()
    yield
    runtime.configure(
        fused_parallelism=settings.fused_parallelism,
        max_image_pixels=settings.max_image_pixels,
        kernels=settings.kernels,
    )
    Image.MAX_IMAGE_PIXELS = pillow_guard
    torch.set_num_threads(threads)


def test_importing_convunext_changes_nothing_global() -> None:
    """Every module imported (the ``python -m convunext`` entry point aside): the environment, Pillow's guard and
    PyTorch's thread count are as before, no thread was started and no C library was loaded through ctypes (the
    OpenMP/MKL setters of the band pool, glibc's ``mallopt``)."""
    seen = _python(
        """
        import ctypes, json, os, pkgutil, threading, importlib
        import torch
        from PIL import Image

        loaded = []
        real_cdll = ctypes.CDLL
        ctypes.CDLL = lambda name, *args, **kwargs: loaded.append(str(name)) or real_cdll(name, *args, **kwargs)
        environ, guard = dict(os.environ), Image.MAX_IMAGE_PIXELS
        threads, torch_threads = {t.name for t in threading.enumerate()}, torch.get_num_threads()

        import convunext
        [getattr(convunext, name) for name in convunext.__all__]  # the names imported on first use
        found = pkgutil.walk_packages(convunext.__path__, "convunext.")
        modules = [module.name for module in found if module.name != "convunext.__main__"]
        for name in modules:
            importlib.import_module(name)
        print(json.dumps({
            "modules": len(modules),
            "environ": dict(os.environ) == environ,
            "pillow": Image.MAX_IMAGE_PIXELS == guard,
            "torch_threads": torch.get_num_threads() == torch_threads,
            "new_threads": sorted({t.name for t in threading.enumerate()} - threads),
            "ctypes": loaded,
        }))
        """
    )
    assert seen["modules"] > 50
    assert seen == {**seen, "environ": True, "pillow": True, "torch_threads": True, "new_threads": [], "ctypes": []}


def test_import_convunext_imports_no_torch() -> None:
    """What lets the command set OpenMP's wait policy before torch loads."""
    seen = _python("import json, sys, convunext, convunext.cli.main; print(json.dumps('torch' in sys.modules))")
    assert seen is False


@pytest.mark.parametrize(("given", "expected"), [(None, runtime.OMP_WAIT_POLICY), ("ACTIVE", "ACTIVE")])
def test_the_command_sets_the_openmp_wait_policy_before_torch_loads(given: str | None, expected: str) -> None:
    """``OMP_WAIT_POLICY`` as it is when ``torch`` is first imported (a finder on ``sys.meta_path`` records it)."""
    seen = _python(
        """
        import json, os, sys

        class Watch:
            policy = "torch never imported"

            def find_spec(self, name, path=None, target=None):
                if name == "torch" and Watch.policy == "torch never imported":
                    Watch.policy = os.environ.get("OMP_WAIT_POLICY")
                return None

        sys.meta_path.insert(0, Watch())
        from convunext.cli.main import main

        code = main(["models"])
        print(json.dumps([code, Watch.policy]))
        """,
        **({} if given is None else {"OMP_WAIT_POLICY": given}),
    )
    assert seen == [0, expected]


def test_settings_are_read_from_the_environment_once() -> None:
    seen = _python(
        f"""
        import json, os
        from convunext import runtime

        first = runtime.settings()
        os.environ["{runtime.MAX_IMAGE_PIXELS_ENV}"] = "7"
        os.environ["{runtime.KERNELS_ENV}"] = "compiled"
        unchanged = runtime.settings() == first
        print(json.dumps([first.fused_parallelism, first.max_image_pixels, first.kernels, unchanged]))
        """,
        **{
            runtime.FUSED_PARALLELISM_ENV: " OpenMP",
            runtime.MAX_IMAGE_PIXELS_ENV: "1_000",
            runtime.KERNELS_ENV: " Reference",
        },
    )
    assert seen == ["openmp", 1000, "reference", True]
    unset = _python(
        """
        import dataclasses, json
        from convunext import runtime

        print(json.dumps(dataclasses.astuple(runtime.settings())))
        """
    )
    assert unset == ["pool", 2 * 89_478_485, "auto", False]  # Pillow's own default limit


PIXELS_EXPECTED = "expected a whole number of pixels (0 = no limit)"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (runtime.MAX_IMAGE_PIXELS_ENV, "lots", f"CONVUNEXT_MAX_IMAGE_PIXELS='lots': {PIXELS_EXPECTED}"),
        (runtime.MAX_IMAGE_PIXELS_ENV, "-1", f"CONVUNEXT_MAX_IMAGE_PIXELS='-1': {PIXELS_EXPECTED}"),
        (runtime.FUSED_PARALLELISM_ENV, "fast", "CONVUNEXT_FUSED_PARALLELISM='fast' is not valid; use pool or openmp"),
        (runtime.KERNELS_ENV, "fast", "CONVUNEXT_KERNELS='fast' is not valid; use auto, compiled or reference"),
    ],
)
def test_an_invalid_variable_stops_the_command_in_one_line(variable: str, value: str, message: str) -> None:
    env = {**os.environ, variable: value, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "convunext", "models"], env=env, capture_output=True, text=True, timeout=300
    )
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"convunext models: error: {message}\n")


def test_configure_refuses_bad_arguments_and_changes_nothing(restored_settings: None) -> None:
    before = runtime.settings()
    for arguments, message in [
        ({"fused_parallelism": "threads"}, "fused_parallelism='threads' is not valid; use 'pool' or 'openmp'"),
        ({"max_image_pixels": -1}, r"max_image_pixels=-1 is not valid; use pixels >= 0 \(0 = no limit\)"),
        ({"kernels": "fast"}, "kernels='fast' is not valid; use 'auto', 'compiled' or 'reference'"),
        ({"threads": 0, "fused_parallelism": "openmp"}, "threads=0 is not valid; use a positive integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            runtime.configure(**arguments)  # type: ignore[arg-type]
        assert runtime.settings() == before


def test_configure_sets_threads_and_raises_pillows_guard_only(restored_settings: None) -> None:
    runtime.configure(threads=1)
    assert torch.get_num_threads() == 1
    Image.MAX_IMAGE_PIXELS = 1000
    assert runtime.configure(max_image_pixels=5000).max_image_pixels == 5000
    assert Image.MAX_IMAGE_PIXELS == 5000  # Pillow neither warns about nor refuses what convunext reads
    runtime.configure(max_image_pixels=10)
    assert Image.MAX_IMAGE_PIXELS == 5000  # never lowered: other code in the process keeps its images
    runtime.configure(max_image_pixels=0)
    assert Image.MAX_IMAGE_PIXELS is None


def test_malloc_is_tuned_only_when_asked() -> None:
    """``mallopt`` (seen through a stand-in C library) is called by ``configure(tune_malloc=True)``, once, with
    glibc's parameter numbers and the thresholds of docs/speed.md."""
    seen = _python(
        """
        import ctypes, json
        from convunext import runtime

        calls = []

        class Mallopt:
            def __call__(self, parameter, value):
                calls.append([parameter, value])
                return 1

        class Libc:
            mallopt = Mallopt()

        ctypes.CDLL = lambda name, *args, **kwargs: Libc()
        untouched = runtime.configure().malloc_tuned
        tuned = runtime.configure(tune_malloc=True).malloc_tuned
        runtime.configure(tune_malloc=True)
        print(json.dumps([untouched, tuned, calls, runtime.runs_on_glibc()]))
        """
    )
    untouched, tuned, calls, glibc = seen
    assert untouched is False and tuned is glibc
    assert calls == ([[-3, 1 << 30], [-1, 2**31 - 1]] if glibc else [])


@pytest.mark.parametrize(("mode", "on_workers"), [("pool", True), ("openmp", False)])
def test_fused_parallelism_decides_where_the_chunks_run(
    mode: runtime.FusedParallelism, on_workers: bool, restored_settings: None
) -> None:
    names: list[str] = []
    runtime.configure(fused_parallelism=mode, threads=2)
    run_tasks([lambda: names.append(threading.current_thread().name) for _ in range(4)])
    assert len(names) == 4
    assert all(name.startswith("convunext-band-") for name in names) == on_workers
    assert on_workers or set(names) == {threading.current_thread().name}


def test_the_trainer_tunes_its_process_through_configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restored_settings: None
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(trainer_module, "configure", lambda **kw: calls.append(kw) or runtime.settings())
    config = ExperimentConfig.from_dict(
        {
            "model": {"kwargs": {"width": 8}},
            "data": {"options": {"num_images": 6, "size": 64}, "crop_size": 48},
            "train": {"threads": 1, "tune_malloc": "on", "output_dir": str(tmp_path), "progress_bar": False},
        }
    )
    trainer_module.Trainer(config)
    assert calls == [{"threads": 1, "tune_malloc": True}]
    calls.clear()
    untuned = {**config.to_dict()["train"], "threads": None, "tune_malloc": "off"}
    trainer_module.Trainer(ExperimentConfig.from_dict({**config.to_dict(), "train": untuned}))
    assert calls == [{"threads": None, "tune_malloc": False}]


def test_the_command_configures_its_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from convunext.cli.main import main

    calls: list[dict] = []
    monkeypatch.setattr(runtime, "configure", lambda **kw: calls.append(kw) or runtime.settings())
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # main() sets it (restored after the test)
    assert main(["models"]) == 0 and "convunext" in capsys.readouterr().out
    assert calls == [{}]
