"""Issue 11, data reading: an interrupted ``data prepare`` is never accepted as a dataset, non-finite or
out-of-range float pixels and decompression bombs are one-line errors naming the file, and ``data info
--validate`` fails when a split is unavailable."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convunext import runtime
from convunext.cli.main import main
from convunext.data import open_dataset, prepare_dataset, read_fov, read_image, read_mask, verify_prepared
from convunext.data.folder import INCOMPLETE_MARKER
from convunext.data.io import image_size
from convunext.errors import ConvUNeXtError
from convunext.runtime import DEFAULT_MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_ENV

STEMS = ["a", "b", "c", "d", "e", "f"]  # folder splits without splits.json: test = [e], val = [f], train = a-d
TRAIN_TINY = ["model.kwargs.width=8", "data.crop_size=16", "train.progress_bar=false", "optim.batch_size=2"]


def _folder(root: Path, stems: list[str] = STEMS, size: int = 16, seed: int = 0) -> Path:
    """A generic folder dataset of RGB PNG images and {0, 255} PNG masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        mask = (rng.random((size, size)) < 0.3).astype(np.uint8) * 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(ConvUNeXtError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _train_argv(root: Path, runs: Path) -> list[str]:
    argv = ["train", "--data", "folder", "--data-root", str(root), "--epochs", "1", "--output-dir", str(runs)]
    return argv + [arg for item in TRAIN_TINY for arg in ("--set", item)]


def _assert_refused_as_interrupted(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``folder`` is refused by the dataset readers, ``data info --validate`` and ``train``, naming it."""
    for split in ("train", "val", "test"):
        message = _one_line_error(open_dataset, "folder", folder, split)
        assert str(folder) in message and "interrupted" in message and "data prepare" in message
    message = _one_line_error(verify_prepared, folder)
    assert str(folder) in message and "interrupted" in message
    for argv in (["data", "info", "folder", str(folder), "--validate"], _train_argv(folder, tmp_path / "runs")):
        code, _, err = _cli(argv, capsys)
        assert code == 2, err
        assert err.count("\n") == 1 and str(folder) in err and "interrupted" in err and "re-run" in err


# ------------------------------------------------------------------------------------------- interrupted prepare
KILL_DURING_STATS = """
import os, signal, sys
import convunext.data.prepare as prepare

def killed(*args, **kwargs):  # images, masks and splits.json are written by now; dataset.json is not
    os.kill(os.getpid(), signal.SIGKILL)

prepare.compute_mean_std = killed
prepare.prepare_dataset("folder", sys.argv[1], sys.argv[2], progress=False)
"""


def test_a_killed_prepare_leaves_no_folder_that_is_accepted(tmp_path, capsys):
    source = _folder(tmp_path / "source")
    out = tmp_path / "prepared"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.run(
        [sys.executable, "-c", KILL_DURING_STATS, str(source), str(out)], env=env, capture_output=True, timeout=120
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    leftovers = [p for p in tmp_path.iterdir() if p.name not in ("source", "runs")]
    assert leftovers, "the kill happened after prepare had written files"
    for folder in leftovers:
        assert (folder / "images").is_dir() and not (folder / "dataset.json").exists()
        _assert_refused_as_interrupted(folder, tmp_path, capsys)
    assert not out.exists()  # OUT appears only once complete


def test_a_prepare_stopped_late_removes_everything(tmp_path, monkeypatch):
    source = _folder(tmp_path / "source")
    out = tmp_path / "prepared"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("convunext.data.prepare.compute_mean_std", stop)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("folder", source, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]
    out.mkdir()  # an empty OUT given by the user is kept, still empty
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("folder", source, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "source"] and not any(out.iterdir())


def test_a_finished_prepare_is_complete_and_accepted(tmp_path):
    source = _folder(tmp_path / "source")
    out = tmp_path / "empty-out"
    out.mkdir()
    meta = prepare_dataset("folder", source, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-out", "source"]  # no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "images", "masks", "splits.json"]
    assert INCOMPLETE_MARKER not in meta["files"] and verify_prepared(out) == []
    assert len(open_dataset("folder", out, "train")) == 4


def test_a_hand_made_folder_without_dataset_json_is_still_accepted(tmp_path):
    root = _folder(tmp_path / "mine")
    (root / "splits.json").write_text(json.dumps({"train": ["a", "b", "c", "d"], "val": ["e"], "test": ["f"]}))
    assert [len(open_dataset("folder", root, split)) for split in ("train", "val", "test")] == [4, 1, 1]


# ------------------------------------------------------------------------------------------- float pixels
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_pixels_are_refused_naming_the_file(tmp_path, capsys, bad):
    root = _folder(tmp_path / "ds")
    image = np.full((16, 16), 0.5, np.float32)
    image[3, 4] = bad
    path = root / "images" / "b.tif"
    (root / "images" / "b.png").unlink()
    Image.fromarray(image, mode="F").save(path)
    assert Image.open(path).mode == "F"
    message = _one_line_error(read_image, path)
    assert message.startswith(str(path)) and "NaN or infinite" in message
    code, _, err = _cli(["data", "info", "folder", str(root), "--validate"], capsys)
    assert code == 2 and str(path) in err and "NaN or infinite" in err and err.count("\n") == 1
    Image.fromarray(image, mode="F").save(root / "fov.tif")
    assert "NaN or infinite" in _one_line_error(read_fov, root / "fov.tif")


def test_float_pixels_outside_zero_one_are_refused(tmp_path):
    path = tmp_path / "scaled.tif"
    Image.fromarray(np.array([[0.0, 128.0], [255.0, 3.0]], np.float32), mode="F").save(path)
    message = _one_line_error(read_image, path)
    assert message.startswith(str(path)) and "[0, 1]" in message and "255" in message
    Image.fromarray(np.array([[0.0, 0.25], [1.0, 1.0000001]], np.float32), mode="F").save(path)
    assert np.allclose(read_image(path)[..., 0], [[0.0, 0.25], [1.0, 1.0]])  # rounding noise is clipped


def test_prepare_keeps_float_images(tmp_path):
    source = _folder(tmp_path / "source")
    values = np.linspace(0.0, 1.0, 256, dtype=np.float32).reshape(16, 16)
    (source / "images" / "a.png").unlink()
    Image.fromarray(values, mode="F").save(source / "images" / "a.tif")
    out = tmp_path / "prepared"
    prepare_dataset("folder", source, out, progress=False)
    stored = read_image(out / "images" / "a.png")
    assert stored.shape == (16, 16, 1) and np.abs(stored[..., 0] - values).max() <= 0.5 / 65535 + 1e-7


def test_integer_pixels_beyond_sixteen_bits_are_refused(tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(np.array([[0, 70000], [5, 3]], np.int32)).save(path)
    assert Image.open(path).mode == "I"
    message = _one_line_error(read_image, path)
    assert message.startswith(str(path)) and "0..70000" in message and "16-bit" in message


def test_a_cmyk_fov_reads_as_grey(tmp_path):
    inside = np.array([[0, 255], [255, 0]], np.uint8)
    path = tmp_path / "fov.jpg"
    Image.fromarray(inside).convert("CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    assert np.array_equal(read_fov(path), inside > 0)


# ------------------------------------------------------------------------------------------- decompression bombs
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_blank_png(path: Path, width: int, height: int) -> None:
    """A valid, all-black 1-bit PNG, compressed row by row (a 20000 x 20000 one is ~60 KB and takes ~0.2 s)."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    )


def _assert_pixel_limit_message(message: str, path: Path, limit: int) -> None:
    assert str(path) in message and f"{limit:,}" in message and MAX_IMAGE_PIXELS_ENV in message
    assert "0 = no limit" in message


@pytest.fixture()
def pixel_limit():
    """Sets convunext's ``max_image_pixels`` (with :func:`runtime.configure`, which raises Pillow's own guard to it
    where lower); both are restored after the test."""
    setting, pillow_guard = runtime.settings().max_image_pixels, Image.MAX_IMAGE_PIXELS
    yield lambda limit: runtime.configure(max_image_pixels=limit)
    runtime.configure(max_image_pixels=setting)
    Image.MAX_IMAGE_PIXELS = pillow_guard


def test_a_decompression_bomb_is_one_line_in_info_and_train(tmp_path, capsys, pixel_limit):
    pixel_limit(DEFAULT_MAX_IMAGE_PIXELS)
    root = _folder(tmp_path / "ds")
    bomb = root / "images" / "0-huge.png"  # sorts first: its header gives the dataset's channel count
    _write_blank_png(bomb, 20000, 20000)
    _write_blank_png(root / "masks" / "0-huge.png", 20000, 20000)
    assert bomb.stat().st_size < 200_000
    for argv in (["data", "info", "folder", str(root)], _train_argv(root, tmp_path / "runs")):
        code, _, err = _cli(argv, capsys)
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith(f"convunext {argv[0]}: error: ")
        _assert_pixel_limit_message(err, bomb, DEFAULT_MAX_IMAGE_PIXELS)
    for reader in (read_image, read_mask, read_fov, image_size):
        _assert_pixel_limit_message(_one_line_error(reader, bomb), bomb, DEFAULT_MAX_IMAGE_PIXELS)


def test_the_pixel_limit_is_a_runtime_setting(tmp_path, pixel_limit):
    """(Its environment variable: tests/test_runtime.py.)"""
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(path)
    pillow_guard = Image.MAX_IMAGE_PIXELS
    pixel_limit(100)
    message = _one_line_error(read_image, path)
    _assert_pixel_limit_message(message, path, 100)
    assert "12x10 = 120 pixels" in message  # from the header
    pixel_limit(120)
    assert read_image(path).shape == (10, 12, 1)
    assert pillow_guard == Image.MAX_IMAGE_PIXELS  # reading never touches Pillow's guard, nor does a lower limit
    pixel_limit(0)
    big = tmp_path / "big.png"
    _write_blank_png(big, 2 * 10**4, 2 * 10**4)
    assert image_size(big) == (20000, 20000)  # no limit (header only: decoding would need 400 MB)


def test_a_limit_above_pillows_guard_needs_configure(tmp_path):
    """A limit above Pillow's own, from the environment but without :func:`runtime.configure`: Pillow still
    refuses the file, and the error says how to lift that; after ``configure()`` its header is read."""
    big = tmp_path / "big.png"
    _write_blank_png(big, 20_000, 20_000)
    driver = f"""
from convunext import runtime
from convunext.data.io import image_size
from convunext.errors import ConvUNeXtError
try:
    image_size({str(big)!r})
except ConvUNeXtError as error:
    print(error)
runtime.configure()
print(image_size({str(big)!r}))
"""
    env = {**os.environ, MAX_IMAGE_PIXELS_ENV: "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines() == [
        f"{big}: more than 178,956,970 pixels, over Pillow's limit (twice PIL.Image.MAX_IMAGE_PIXELS, a guard against "
        "decompression bombs); call convunext.runtime.configure() to raise it to convunext's max_image_pixels",
        "(20000, 20000)",
    ], done.stderr


# ------------------------------------------------------------------------------------------- data info --validate
def test_validate_fails_when_a_split_is_unavailable(tmp_path, capsys):
    root = _folder(tmp_path / "ds")
    (root / "splits.json").write_text(json.dumps({"train": ["a", "b", "c", "d", "e", "f"]}))
    code, out, err = _cli(["data", "info", "folder", str(root)], capsys)
    assert code == 0 and "test: unavailable" in out  # describing a folder without a test split is fine
    code, out, err = _cli(["data", "info", "folder", str(root), "--validate"], capsys)
    assert code == 2 and "test: unavailable" in out and "train: 5 images (all decoded)" in out
    assert err.count("\n") == 1 and str(root) in err and "'test'" in err


def test_validate_reports_every_bad_split_and_fails(tmp_path, capsys):
    root = _folder(tmp_path / "ds")
    (root / "dataset.json").write_text(json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3}))  # no statistics pass
    empty, truncated = root / "images" / "e.png", root / "images" / "b.png"  # the test split's image, a train one
    empty.write_bytes(b"")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    code, out, err = _cli(["data", "info", "folder", str(root), "--validate"], capsys)
    assert code == 2 and "val: 1 images (all decoded)" in out
    assert f"train: invalid ({truncated}: cannot read image" in out and f"test: unavailable ({empty}:" in out
    assert err.count("\n") == 1 and str(root) in err
    assert "'train' (bad file)" in err and "'test' (unavailable)" in err and "'trainval' (bad file)" in err
