"""The documentation: the site builds with ``mkdocs build --strict`` (no broken link, no page missing from the
navigation, no docstring that mkdocstrings cannot read), every public function of the API reference has a
docstring, every ``convunext`` command shown in the README and the docs parses, and the README stays short."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from convunext.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_LIMIT_BYTES = 15 * 1024
PLACEHOLDER = re.compile(r"<[^>]+>|\.\.\.")  # runs/<run>, `...`: shown as a pattern, not a runnable command


def _documented_modules() -> list[str]:
    """The modules the API reference renders (``::: module`` lines of docs/api.md)."""
    return re.findall(r"^::: ([\w.]+)$", (DOCS / "api.md").read_text(), flags=re.M)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _commands(path: Path) -> list[str]:
    """The ``convunext ...`` command lines in the ```bash blocks of ``path`` (continuations joined, comments cut)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split(" #", 1)[0].strip().rstrip("&").strip()
                if part.startswith("convunext ") and not PLACEHOLDER.search(part):
                    commands.append(part)
    return commands


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pages = {path.stem for path in DOCS.glob("*.md")}
    built = {path.parent.name for path in (tmp_path / "site").glob("*/index.html")}
    assert pages - {"index"} <= built  # every page is built (and strict mode refuses pages outside the nav)
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "convunext.models.registry.create_model" in api  # the reference is rendered from the docstrings


@pytest.mark.parametrize("module_name", _documented_modules())
def test_every_public_function_of_the_api_reference_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert inspect.getdoc(module), f"{module_name}: no module docstring"
    missing = []
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module_name:
            continue
        if inspect.isfunction(value) or inspect.isclass(value):
            if not inspect.getdoc(value):
                missing.append(name)
            if inspect.isclass(value):
                missing += [
                    f"{name}.{attribute}"
                    for attribute, member in vars(value).items()
                    if not attribute.startswith("_") and inspect.isfunction(member) and not inspect.getdoc(member)
                ]
    assert not missing, f"{module_name}: public names without a docstring: {missing}"


def test_the_package_api_is_in_the_reference() -> None:
    import convunext

    documented = _documented_modules()
    for name in convunext.__all__:
        if name == "__version__":
            continue
        defined_in = getattr(convunext, name).__module__
        assert defined_in in documented, f"convunext.{name} (from {defined_in}) is not in docs/api.md"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda path: path.name)
def test_every_command_shown_parses(path: Path) -> None:
    parser = build_parser()
    for command in _commands(path):
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as error:  # argparse's refusal
            pytest.fail(f"{path.name}: `{command}` does not parse (exit {error.code})")


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_bytes()) <= README_LIMIT_BYTES
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme.read_text())
    local = [target for target in targets if not target.startswith("http")]
    assert local and all((ROOT / target).exists() for target in local), [t for t in local if not (ROOT / t).exists()]
    assert len(_commands(readme)) >= 8  # the examples are commands, checked above


def test_the_onnx_runtime_snippet_runs_and_matches_predict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployment page's ONNX Runtime example, run as written on a tiny exported model, gives the mask that
    ``Predictor`` gives for the same image."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import torch
    from PIL import Image

    from convunext.checkpoint import save_checkpoint
    from convunext.inference import Inferer
    from convunext.inference.export import export_model
    from convunext.inference.predictor import Predictor
    from convunext.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", width=4)
    meta = {
        "model": {"name": "unet", "kwargs": {"width": 4}},
        "classes": ["background", "vessel"],
        "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.15]},
    }
    save_checkpoint(tmp_path / "runs" / "my-run", "best", model, meta)
    export_model(model, "onnx", tmp_path / "convunext.onnx")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    snippet = re.search(r"```python\n(import json\n.*?)```", (DOCS / "prediction.md").read_text(), flags=re.S)
    assert snippet is not None
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(snippet.group(1), namespace)  # noqa: S102 - the documentation's own example
    predictor = Predictor.from_checkpoint(tmp_path / "runs" / "my-run", Inferer(tile_size=0, backend="eager"))
    expected = predictor.predict(np.asarray(Image.open(tmp_path / "photo.png").convert("RGB"))).mask
    assert namespace["mask"].shape == (48, 64)  # type: ignore[union-attr]
    assert (namespace["mask"] == expected).mean() > 0.999  # type: ignore[operator]
