"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    ci_lines = [line for line in script.splitlines() if line.startswith("readme_test_command=")]
    assert len(ci_lines) == 1
    command = ci_lines[0].removeprefix("readme_test_command=").strip("'")
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{command}\n```" in readme
    # run here and again from a fresh clone without ../shared
    assert script.count('bash -c "$readme_test_command"') == 2 and "CONVUNEXT_SHARED_OPTIONAL=1" in script


def test_readme_starts_with_the_main_job() -> None:
    readme = (ROOT / "README.md").read_text()
    first_command = readme.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert first_command == "pip install torch==2.13.0 -e . && convunext train"
