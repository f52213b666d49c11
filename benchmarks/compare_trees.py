"""Before/after speed check of two source trees of convunext on this machine: the same configurations measured
alternately (ABAB...), each in a fresh process, so that drift of a shared machine hits both trees alike.

    python benchmarks/compare_trees.py --before /path/to/old/checkout --rounds 3 --out benchmarks/results/X.md

Each tree is imported from its own ``src/`` (the worker processes too). Prints a table of medians over rounds of
each configuration's median step, the ratio after/before, and peak RSS; writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = (  # section, model, path, mode, batch, side, repeats
    ("inference", "convunext", "fast", "infer", 1, 480, 10),
    ("inference", "unet", "eager", "infer", 1, 480, 10),
    ("training", "convunext", "trainer", "train", 4, 256, 6),
    ("training", "unet", "trainer", "train", 4, 256, 6),
)
DRIVER = """
import json, sys
from convunext.benchmarking.configs import Config
from convunext.benchmarking.measure import measure_in_subprocess
section, model, path, mode, batch, side, repeats = json.loads(sys.argv[1])
result = measure_in_subprocess(Config(section, model, path, mode, batch, (side, side), repeats=repeats, warmup=2))
print(json.dumps({"median": result.median, "rss": result.peak_rss_mb, "error": result.error}))
"""


def measure(tree: Path, row: tuple) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(row)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{tree}: {done.stderr.strip().splitlines()[-1]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["error"]:
        raise SystemExit(f"{tree}: {row}: {result['error']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the baseline (its src/ is used)")
    parser.add_argument("--after", type=Path, default=ROOT, help="checkout to compare (default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    times: dict[tuple, dict[str, list[float]]] = {row: {"before": [], "after": []} for row in ROWS}
    rss: dict[tuple, dict[str, float]] = {row: {} for row in ROWS}
    for round_index in range(args.rounds):
        for row in ROWS:
            for label, tree in (("before", args.before), ("after", args.after)):
                result = measure(tree, row)
                times[row][label].append(result["median"])
                rss[row][label] = max(rss[row].get(label, 0.0), result["rss"])
                print(f"round {round_index + 1} {label:6} {row[1]} {row[2]} {row[3]}: {result['median']:.3f} s",
                      file=sys.stderr)  # fmt: skip
    lines = [
        f"Before/after, {args.rounds} alternating rounds, each a fresh process (median of the rounds' medians).",
        "",
        "| configuration | before s | after s | after / before | peak RSS MB before | after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in ROWS:
        before, after = statistics.median(times[row]["before"]), statistics.median(times[row]["after"])
        label = f"{row[1]} {row[2]} {row[3]} {row[4]}x3x{row[5]}x{row[5]}"
        lines.append(
            f"| {label} | {before:.3f} | {after:.3f} | {after / before:.2f} | "
            f"{rss[row]['before']:.0f} | {rss[row]['after']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
