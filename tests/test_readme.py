"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("pip install")]
    assert len(ci_lines) == 1
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{ci_lines[0]}\n```" in readme


def test_readme_starts_with_the_main_job() -> None:
    readme = (ROOT / "README.md").read_text()
    first_command = readme.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert first_command == "pip install torch==2.13.0 -e . && convunext train"
