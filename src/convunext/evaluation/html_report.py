"""``report.html``: one self-contained page per evaluation (opens offline, no script, no network).

It holds the metric table (the numbers of ``metrics.json``), the ROC curve with the operating point for datasets
with a field of view, and one row per image sorted worst Dice first with thumbnails of the image, the prediction
and an error map. Thumbnails are embedded as ``data:`` URIs; with ``full_maps`` the full-size prediction and error
maps are written beside the page (``maps/``) and linked from it.

Error-map colours (Okabe & Ito's colour-blind-safe set, distinct by hue and by lightness): true positive white,
false positive orange, false negative blue, true negative black, pixels not scored (outside the FOV, ignore
labels) dark grey. A thumbnail cell shows the most severe outcome among the pixels it covers (false negative >
false positive > true positive > not scored > true negative), so a one-pixel vessel or error never disappears
when the image is shrunk.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..data.io import IGNORE_INDEX
from ..errors import ConvUNeXtError
from ..inference.threshold import predicted_labels
from ..utils.io import atomic_path, atomic_write_text

__all__ = ["ERROR_COLOURS", "IMAGE_COLUMNS", "ImagePanels", "ReportGallery", "error_codes", "write_html_report"]

TRUE_NEGATIVE, NOT_SCORED, TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = range(5)
"""Error-map codes, in order of severity (a thumbnail cell shows the highest code it covers)."""

ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "true negative": (0, 0, 0),
    "not scored": (64, 64, 64),
    "true positive": (255, 255, 255),
    "false positive": (230, 159, 0),
    "false negative": (0, 114, 178),
}
"""Colour of each error-map code, in code order."""

CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (255, 255, 255),
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)
"""Prediction thumbnails: background black, class 1 white, further classes in Okabe & Ito's order (the last
colour stands for every class beyond)."""

IMAGE_COLUMNS = {
    "dice_fg": "Dice",
    "iou_fg": "IoU",
    "cldice": "clDice",
    "components_pred": "components (prediction)",
    "components_true": "components (truth)",
    "fov_sensitivity": "sensitivity",
    "fov_specificity": "specificity",
    "scale": "scale",
}
"""Per-image metrics shown in the image table (those present in ``per_image.csv``), with their column titles."""


def error_codes(prediction: Tensor, target: Tensor, fov: Tensor | None = None) -> Tensor:
    """Per-pixel outcome codes of a predicted label map against the truth.

    Args:
        prediction: ``H x W`` predicted class ids.
        target: ``H x W`` true class ids (``IGNORE_INDEX`` = not scored).
        fov: ``H x W`` bool field of view, or None.

    Returns:
        ``H x W`` uint8: ``TRUE_POSITIVE`` (foreground predicted as its own class), ``FALSE_POSITIVE`` (foreground
        predicted where the truth is background or another class), ``FALSE_NEGATIVE`` (foreground predicted as
        background), ``TRUE_NEGATIVE``, ``NOT_SCORED`` (ignore label or outside the FOV).
    """
    codes = torch.full(target.shape, TRUE_NEGATIVE, dtype=torch.uint8)
    truth_fg, predicted_fg = target != 0, prediction != 0
    codes[predicted_fg & (prediction == target)] = TRUE_POSITIVE
    codes[predicted_fg & (prediction != target)] = FALSE_POSITIVE
    codes[truth_fg & ~predicted_fg] = FALSE_NEGATIVE
    scored = target != IGNORE_INDEX
    if fov is not None:
        scored &= fov
    codes[~scored] = NOT_SCORED
    return codes


def _shrink_max(codes: Tensor, side: int) -> Tensor:
    """``H x W`` codes -> at most ``side`` pixels on the long side, each cell the maximum code it covers."""
    factor = max(1, math.ceil(max(codes.shape) / side))
    if factor == 1:
        return codes
    pooled = F.max_pool2d(codes[None, None].float(), factor, ceil_mode=True)
    return pooled[0, 0].to(torch.uint8)


def _png(codes: Tensor, colours: Sequence[tuple[int, int, int]]) -> bytes:
    """A palette PNG of ``H x W`` codes (code ``i`` drawn in ``colours[i]``)."""
    picture = Image.fromarray(codes.numpy(), mode="P")
    picture.putpalette([value for colour in colours for value in colour])
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _image_jpeg(image: Tensor, side: int) -> bytes:
    """``C x H x W`` image in [0, 1] -> a JPEG thumbnail (RGB for 3 channels, else the first channel in grey)."""
    pixels = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = pixels[:3].permute(1, 2, 0).numpy() if pixels.shape[0] >= 3 else pixels[0].numpy()
    picture = Image.fromarray(np.ascontiguousarray(array))
    picture.thumbnail((side, side), Image.Resampling.BOX)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@dataclass
class ImagePanels:
    """The pictures of one image: thumbnails (encoded) and, if written, the full-size maps' file names."""

    image_jpeg: bytes
    prediction_png: bytes
    error_png: bytes
    full_maps: dict[str, str] = field(default_factory=dict)
    """Paths of the full-size maps written, by kind (``prediction``, ``errors``)."""


class ReportGallery:
    """Collects the pictures of every image while an evaluation runs (``evaluate_model(..., on_image=gallery)``).

    Args:
        thumbnail_side: long side of the thumbnails in pixels.
        full_maps_dir: where to write full-size ``NAME_prediction.png`` and ``NAME_errors.png`` (None: not written).
        threshold: the binary foreground threshold the evaluation runs at (None: the argmax), so that the pictures
            show the masks the metrics score.
    """

    def __init__(
        self, thumbnail_side: int = 256, full_maps_dir: str | Path | None = None, threshold: float | None = None
    ) -> None:
        self.thumbnail_side = int(thumbnail_side)
        self.threshold = threshold
        self.full_maps_dir = Path(full_maps_dir) if full_maps_dir is not None else None
        self.panels: dict[str, ImagePanels] = {}
        self._map_stems: dict[str, str] = {}  # file stem of the full-size maps -> the image name it stands for

    def __call__(self, sample: Mapping[str, Any], probabilities: Tensor) -> None:
        """Add one image: ``sample`` as the dataset gives it (``image`` C x H x W in [0, 1], ``mask`` H x W,
        ``fov`` H x W bool, ``name``) and the model's ``1 x K x H x W`` probabilities."""
        prediction = predicted_labels(probabilities[0], self.threshold).cpu()
        codes = error_codes(prediction, sample["mask"], sample.get("fov"))
        side = self.thumbnail_side
        classes = prediction.clamp(max=len(CLASS_COLOURS) - 1).to(torch.uint8)
        panels = ImagePanels(
            image_jpeg=_image_jpeg(sample["image"], side),
            prediction_png=_png(_shrink_max(classes, side), CLASS_COLOURS),
            error_png=_png(_shrink_max(codes, side), list(ERROR_COLOURS.values())),
        )
        if self.full_maps_dir is not None:
            stem = _file_stem(sample["name"])
            other = self._map_stems.setdefault(stem, sample["name"])
            if other != sample["name"]:
                raise ConvUNeXtError(
                    f"images {other!r} and {sample['name']!r} would write the same full-size maps "
                    f"({stem}_*.png); rename one, or evaluate without --full-maps"
                )
            self.full_maps_dir.mkdir(parents=True, exist_ok=True)
            for kind, data in (
                ("prediction", _png(classes, CLASS_COLOURS)),
                ("errors", _png(codes, list(ERROR_COLOURS.values()))),
            ):
                path = self.full_maps_dir / f"{stem}_{kind}.png"
                with atomic_path(path) as tmp:
                    tmp.write_bytes(data)
                panels.full_maps[kind] = str(path)
        self.panels[sample["name"]] = panels


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _threshold_text(threshold: Any) -> str:
    """``0.46``, or ``the argmax: 0.5`` for None (a report made before thresholds were recorded, too)."""
    return f"{threshold:g}" if isinstance(threshold, (int, float)) else "the argmax: 0.5"


def _number(value: Any, key: str) -> str:
    """A table cell carrying the exact value (``data-key``, ``data-value``) and, as text, 4 decimals (integers
    as they are)."""
    if isinstance(value, int):
        return f'<td class="n" data-key="{html.escape(key)}" data-value="{value}">{value}</td>'
    text = "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
    exact = "nan" if text == "—" else repr(float(value))
    return f'<td class="n" data-key="{html.escape(key)}" data-value="{exact}">{text}</td>'


def _roc_svg(fpr: np.ndarray, tpr: np.ndarray, operating_point: tuple[float, float], auc: float) -> str:
    """The ROC curve as inline SVG (axes 0..1), with the operating point of the reported threshold."""
    size, pad = 260, 36
    x = lambda v: pad + v * size  # noqa: E731
    y = lambda v: pad + (1 - v) * size  # noqa: E731
    points = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(fpr, tpr))
    op_x, op_y = operating_point
    return (
        f'<svg class="roc" width="{size + 2 * pad}" height="{size + 2 * pad}" role="img" '
        f'aria-label="ROC curve, AUC {auc:.4f}">'
        f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#888"/>'
        f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#bbb" stroke-dasharray="4 4"/>'
        f'<polyline points="{points}" fill="none" stroke="#0072b2" stroke-width="2"/>'
        f'<circle cx="{x(op_x):.1f}" cy="{y(op_y):.1f}" r="5" fill="#e69f00" stroke="#000"/>'
        f'<text x="{x(0.5)}" y="{size + 2 * pad - 6}" text-anchor="middle">false positive rate (1 - specificity)</text>'
        f'<text x="12" y="{y(0.5)}" text-anchor="middle" transform="rotate(-90 12 {y(0.5)})">'
        "true positive rate (sensitivity)</text>"
        f'<text x="{x(0.55)}" y="{y(0.1)}">AUC {auc:.4f}</text>'
        f'<text x="{x(op_x) + (8 if op_x < 0.5 else -8):.1f}" y="{y(op_y) + 18:.1f}" '
        f'text-anchor="{"start" if op_x < 0.5 else "end"}">operating point</text>'
        "</svg>"
    )


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #111; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: middle; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { display: block; width: 220px; height: auto; image-rendering: pixelated; }
img.photo { image-rendering: auto; }
.legend span { display: inline-block; width: 1em; height: 1em; border: 1px solid #888; vertical-align: middle; }
.legend { margin-right: 1em; }
"""


def write_html_report(
    path: str | Path,
    results: Mapping[str, Any],
    per_image: Sequence[Mapping[str, Any]],
    context: Mapping[str, Any],
    reported_metrics: Sequence[tuple[str, str]],
    gallery: ReportGallery | None = None,
    roc: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write the page.

    Args:
        path: the ``.html`` file to write (atomically).
        results: dataset-level metrics (as in ``metrics.json``).
        per_image: one row per image (as in ``per_image.csv``: ``name``, ``dice_fg``, ...).
        context: what was evaluated (checkpoint, dataset, split...), shown as a list.
        reported_metrics: ``(key, label)`` of the table rows, shown when present in ``results``.
        gallery: the pictures (None: rows without pictures).
        roc: ``(false positive rates, true positive rates)`` for the ROC section (FOV datasets).
    """
    path = Path(path)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Evaluation: {html.escape(str(context.get('model', '')))} on "
        f"{html.escape(str(context.get('dataset', '')))} ({html.escape(str(context.get('split', '')))})</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Evaluation: {html.escape(str(context.get('model', '')))} on "
        f"{html.escape(str(context.get('dataset', '')))}, {html.escape(str(context.get('split', '')))} split</h1>",
        "<ul>",
        *(
            f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>"
            for k, v in context.items()
            if not isinstance(v, Mapping)  # the second observer's scores are a column of the metrics table
        ),
        "</ul>",
    ]
    observer = context.get("second_observer") if isinstance(context.get("second_observer"), Mapping) else None
    parts.append(
        '<h2>Metrics</h2><table id="metrics"><tr><th>metric</th><th>value</th>'
        + ("<th>second observer</th>" if observer else "")
        + "</tr>"
    )
    for key, label in reported_metrics:
        if key in results:
            second = _number(observer.get(key), f"second_observer.{key}") if observer else ""
            parts.append(f"<tr><td>{html.escape(label)}</td>{_number(results[key], key)}{second}</tr>")
    images = int(results["num_images"])
    parts.append(f'<tr><td>images</td><td class="n" data-key="num_images" data-value="{images}">{images}</td></tr>')
    parts.append("</table>")
    if roc is not None and roc[0].size and "fov_sensitivity" in results:
        operating_point = (1.0 - float(results["fov_specificity"]), float(results["fov_sensitivity"]))
        parts += [
            "<h2>ROC curve inside the field of view</h2>",
            f"<p>Every FOV pixel of every image; the operating point is the threshold the other metrics use "
            f"({_threshold_text(context.get('threshold'))}).</p>",
            _roc_svg(roc[0], roc[1], operating_point, float(results.get("fov_auc", math.nan))),
        ]
    present = per_image[0] if per_image else {}
    columns = [key for key in IMAGE_COLUMNS if key in present]
    rows = sorted(per_image, key=lambda row: (_sort_key(row["dice_fg"]), row["name"]))
    parts.append("<h2>Images, worst Dice first</h2>")
    if gallery is not None:
        legend = " ".join(
            f'<span class="legend"><span style="background: rgb{colour}"></span> {name}</span>'
            for name, colour in ERROR_COLOURS.items()
        )
        parts.append(f"<p>Error map: {legend}</p>")
    header = "".join(f'<th title="{key}">{html.escape(IMAGE_COLUMNS[key])}</th>' for key in columns)
    pictures = "<th>image</th><th>prediction</th><th>errors</th>" if gallery is not None else ""
    parts.append(f'<table id="images"><tr><th>#</th><th>name</th>{pictures}{header}</tr>')
    for rank, row in enumerate(rows, start=1):
        name = str(row["name"])
        line = f'<tr data-name="{html.escape(name)}"><td>{rank}</td><td>{html.escape(name)}</td>'
        panels = gallery.panels.get(name) if gallery is not None else None
        if panels is not None:
            links = {kind: os.path.relpath(file, path.parent) for kind, file in panels.full_maps.items()}
            line += _picture_cell(panels.image_jpeg, "image/jpeg", f"{name}: image", None, "photo")
            line += _picture_cell(panels.prediction_png, "image/png", f"{name}: prediction", links.get("prediction"))
            line += _picture_cell(panels.error_png, "image/png", f"{name}: error map", links.get("errors"))
        elif gallery is not None:
            line += "<td></td><td></td><td></td>"
        parts.append(line + "".join(_number(row[key], key) for key in columns) + "</tr>")
    parts += ["</table>", "</body></html>", ""]
    atomic_write_text(path, "\n".join(parts))
    return path


def _sort_key(value: Any) -> float:
    return -math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _picture_cell(data: bytes, mime: str, alt: str, full_map: str | None, css: str = "") -> str:
    picture = f'<img class="{css}" src="{_data_uri(data, mime)}" alt="{html.escape(alt)}">'
    if full_map is not None:
        picture = f'<a href="{html.escape(Path(full_map).as_posix())}">{picture}</a>'
    return f"<td>{picture}</td>"
