"""The benchmark's Markdown report: the machine, one table per section (with speed-ups), notes."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from ..utils.table import markdown_table
from .configs import SECTIONS
from .measure import Result

__all__ = ["HEADERS", "SECTION_TITLES", "render_report"]


def _fmt(value: float, digits: int = 3) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:.{digits}f}"


def _section_rows(results: Sequence[Result], peak: float) -> list[list[str]]:
    """Table rows with ratios to the authors' style and to UNet (eager) of the same section and shape."""

    def reference(model: str, path: str, result: Result) -> float:
        for other in results:
            c = other.config
            if (c.model, c.path, c.size, c.batch, c.env_label, c.recompute) == (
                model,
                path,
                result.config.size,
                result.config.batch,
                "",
                False,
            ) and not other.error:
                return other.median
        return float("nan")

    rows = []
    for result in results:
        c = result.config
        shape = f"{c.batch}x{c.channels}x{c.size[0]}x{c.size[1]}"
        if result.error:
            rows.append([c.label, shape, f"{result.params:,}", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                         f"error: {result.error}"])  # fmt: skip
            continue
        median = result.median
        images = c.batch if c.mode != "window" else 1
        flops = result.gflops * (3 if c.mode == "train" else 1)
        if c.mode == "window":
            flops = float("nan")
        achieved = flops / median if median else float("nan")
        authors = reference("convunext", "authors", result)
        unet = reference("unet", "eager", result)
        memory = result.peak_gpu_mb if c.device.startswith("cuda") else result.peak_rss_mb
        notes = []
        if result.setup_s > 1:
            notes.append(f"setup {result.setup_s:.1f} s")
        if result.first_call_s > 2 * median:
            notes.append(f"first call {result.first_call_s:.1f} s")
        if not result.rss_reset:
            notes.append("RSS peak includes setup")
        if result.max_abs_diff == result.max_abs_diff:
            notes.append(f"max |diff| to eager {result.max_abs_diff:.1e}")
        rows.append(
            [
                c.label,
                shape,
                f"{result.params:,}",
                _fmt(result.gflops * c.batch if c.mode != "window" else result.gflops, 1),
                _fmt(median),
                _fmt(min(result.times)),
                _fmt(max(result.times)),
                _fmt(images / median, 2),
                _fmt(achieved, 1),
                _fmt(100 * achieved / peak, 0) if peak else "-",
                _fmt(memory, 0),
                _fmt(result.peak_heap_mb, 0),
                f"{authors / median:.2f}x" if authors == authors else "-",
                f"{unet / median:.2f}x" if unet == unet else "-",
                "; ".join(notes),
            ]
        )
    return rows


HEADERS = [
    "configuration",
    "input",
    "params",
    "GFLOPs",
    "median s",
    "min s",
    "max s",
    "img/s",
    "GFLOP/s",
    "% peak",
    "peak RSS MB",
    "peak in use MB",
    "speed-up vs authors",
    "speed-up vs UNet",
    "notes",
]

SECTION_TITLES = {
    "inference": "Inference (CPU fp32, eval; one forward pass)",
    "training": "Training step (forward + backward + AdamW)",
    "recompute": "Activation recomputation (training step)",
    "sliding window": "Sliding-window prediction of one full image (tiles {tile}, overlap 0.25, Gaussian blending)",
}


def render_report(results: Sequence[Result], machine: dict[str, str], peak: float, notes: Sequence[str]) -> str:
    """The Markdown report: machine description, one table per section, notes."""
    lines = ["# convunext benchmark", "", f"Date: {_dt.datetime.now().isoformat(timespec='seconds')}", ""]
    lines += [f"- **{key}**: {value}" for key, value in machine.items()]
    lines += [f"- **measured fp32 matmul peak**: {peak:.1f} GFLOP/s (best sgemm of 3 shapes, best of 5)", ""]
    for section in SECTIONS:
        chosen = [r for r in results if r.config.section == section]
        if not chosen:
            continue
        title = SECTION_TITLES[section].format(tile=chosen[0].config.tile)
        lines += [f"## {title}", "", markdown_table(HEADERS, _section_rows(chosen, peak)), ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
