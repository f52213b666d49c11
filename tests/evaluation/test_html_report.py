"""``report.html``: error-map codes, thumbnails that keep thin structures, the ROC curve, and the page itself
(every number equals ``metrics.json`` / ``per_image.csv``, every picture decodes)."""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convunext.cli.main import main
from convunext.evaluation.fov import FovMetrics
from convunext.evaluation.html_report import (
    ERROR_COLOURS,
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    NOT_SCORED,
    TRUE_NEGATIVE,
    TRUE_POSITIVE,
    ReportGallery,
    error_codes,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class _Page(HTMLParser):
    """The numbers (``data-key`` -> ``data-value`` per table), image rows and picture sources of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.table = ""
        self.metrics: dict[str, str] = {}
        self.rows: list[dict[str, str]] = []
        self.sources: list[str] = []
        self.links: list[str] = []
        self.svg = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "table":
            self.table = attributes.get("id", "")
        elif tag == "tr" and "data-name" in attributes:
            self.rows.append({"name": attributes["data-name"]})
        elif tag == "td" and "data-key" in attributes:
            target = self.metrics if self.table == "metrics" else self.rows[-1]
            target[attributes["data-key"]] = attributes.get("data-value", "")
        elif tag == "img":
            self.sources.append(attributes["src"])
        elif tag == "a":
            self.links.append(attributes["href"])
        elif tag == "svg":
            self.svg += 1


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _decode(source: str) -> Image.Image:
    header, data = source.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    picture = Image.open(io.BytesIO(base64.b64decode(data)))
    picture.load()
    return picture


def test_error_codes_by_hand() -> None:
    target = torch.tensor([[0, 1, 1, 0, 2, 255]])
    prediction = torch.tensor([[0, 1, 0, 1, 1, 1]])
    fov = torch.tensor([[True, True, True, True, True, True]])
    codes = error_codes(prediction, target, fov).tolist()[0]
    assert codes == [TRUE_NEGATIVE, TRUE_POSITIVE, FALSE_NEGATIVE, FALSE_POSITIVE, FALSE_POSITIVE, NOT_SCORED]
    outside = torch.tensor([[True, False, True, True, True, True]])
    assert error_codes(prediction, target, outside).tolist()[0][1] == NOT_SCORED


def test_thumbnails_keep_one_pixel_errors_and_vessels() -> None:
    image = torch.rand(3, 600, 500)
    mask = torch.zeros(600, 500, dtype=torch.int64)
    mask[300, :] = 1  # a one-pixel vessel, predicted
    mask[:, 100] = 1  # another, missed
    probabilities = torch.zeros(1, 2, 600, 500)
    probabilities[0, 0] = 1.0
    probabilities[0, :, 300, :] = torch.tensor([0.0, 1.0])[:, None]
    gallery = ReportGallery(thumbnail_side=100)
    gallery({"image": image, "mask": mask, "fov": torch.ones(600, 500, dtype=torch.bool), "name": "a"}, probabilities)
    panels = gallery.panels["a"]
    errors = Image.open(io.BytesIO(panels.error_png))
    assert max(errors.size) <= 100 and errors.mode == "P"
    codes = np.asarray(errors)
    assert (codes == FALSE_NEGATIVE).any(axis=0).sum() == 1  # the missed vessel: one thumbnail column
    assert (codes == TRUE_POSITIVE).any() and set(np.unique(codes)) <= set(range(len(ERROR_COLOURS)))
    prediction = np.asarray(Image.open(io.BytesIO(panels.prediction_png)))
    assert prediction.any(axis=1).sum() == 1  # the predicted vessel survives the shrinking as one row
    assert max(Image.open(io.BytesIO(panels.image_jpeg)).size) <= 100


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_roc_curve_ends_at_the_corners_and_encloses_the_auc(mode: str) -> None:
    generator = torch.Generator().manual_seed(0)
    target = (torch.rand(1, 40, 40, generator=generator) < 0.3).long()
    scores = (target.float() * 0.3 + torch.rand(1, 40, 40, generator=generator) * 0.7).clamp(0, 1)
    metrics = FovMetrics(auc=mode)  # type: ignore[arg-type]
    metrics.update(scores, target)
    fpr, tpr = metrics.roc_curve(max_points=4096)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # every distinct score is a threshold here
    assert area == pytest.approx(metrics.auc(), abs=2e-3)
    short_fpr, _ = metrics.roc_curve(max_points=16)
    assert short_fpr.size <= 18
    assert FovMetrics().roc_curve()[0].size == 0  # nothing seen: no curve


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    sets = ["model.kwargs.width=8", "data.options.num_images=10", "data.options.size=64", "data.crop_size=48"]
    args = ["train", "--epochs", "1", "--output-dir", str(out), "--set", "train.progress_bar=false"]
    assert main([*args, *(f for item in [*sets, "train.run_name=tiny"] for f in ("--set", item))]) == 0
    return out / "tiny"


def test_the_page_holds_the_reports_numbers_and_pictures_that_decode(run_dir: Path, tmp_path: Path) -> None:
    assert main(["evaluate", str(run_dir), "synthetic", "--out", str(tmp_path), "--full-maps"]) == 0
    page = _parse(tmp_path / "report.html")
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert "dice_fg_mean" in page.metrics and "fov_auc" in page.metrics
    for key, value in page.metrics.items():
        assert float(value) == metrics[key], key  # the exact value of metrics.json, not a rounding
    per_image = {row["name"]: row for row in csv.DictReader((tmp_path / "per_image.csv").open())}
    assert sorted(row["name"] for row in page.rows) == sorted(per_image)
    dice = [float(row["dice_fg"]) for row in page.rows]
    assert dice == sorted(dice)  # worst first
    for row in page.rows:
        for key in ("dice_fg", "iou_fg", "fov_sensitivity", "cldice", "components_pred"):
            assert float(row[key]) == pytest.approx(float(per_image[row["name"]][key]), abs=1e-6)
    assert len(page.sources) == 3 * len(page.rows)
    for source in page.sources:
        _decode(source)
    assert page.svg == 1  # the ROC curve (synthetic data has a FOV)
    assert len(page.links) == 2 * len(page.rows)
    for link in page.links:  # full-size maps beside the page, at the image's size
        assert Image.open(tmp_path / link).size == (64, 64)


def test_no_html_writes_no_page(run_dir: Path, tmp_path: Path) -> None:
    assert main(["evaluate", str(run_dir), "synthetic", "--out", str(tmp_path), "--no-html"]) == 0
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / "report.html").exists()
