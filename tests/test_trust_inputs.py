"""Hostile data and config (issue 24 item 8): each ends in one line and exit 2, with nothing in
dist/. Before, these gave a traceback (NUL byte, TOML depth), a std::bad_alloc (threads), a
2.7 PiB allocation attempt (golden-set size), 1.86 GB of RSS (a 13000x13000 16-bit PNG), a bundle
folder whose name reads backwards (U+202E), or followed a symlink out of the data folder."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DEFAULT_TOML, Result, assert_user_error
from tests.dicom_files import write_dicom

NAMES = ("normal", "pneumonia")
BUILD = ("build", "-t", "cpu-onnxruntime", "--no-bench")


@pytest.fixture
def images(data_path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_path) as z:
        return z["test_images"][:8], z["test_labels"][:8].reshape(-1)


def project_on(root: Path, tiny_model: Path, data: Path, extra: str = "") -> Path:
    """A project whose [data] path is `data` (an image folder)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "packager.toml").write_text(DEFAULT_TOML.format(model=tiny_model, data=data) + extra)
    return root


def class_folders(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (root / NAMES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / NAMES[label] / f"{i}.png")
    return root


def refused(cli: Callable[..., Result], root: Path, *words: str) -> None:
    r = cli(*BUILD, cwd=root)
    assert_user_error(r, *words)
    assert not any((root / "dist").glob("*/*/manifest.json"))  # nothing published


# ---- data ------------------------------------------------------------------------------------


def test_a_nul_byte_in_a_labels_csv_path_is_one_line(
    images, tiny_model: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(images[0][0]).save(data / "0.png")
    (data / "labels.csv").write_bytes(b"path,label\n0.png\x00.png,0\n")
    refused(cli, project_on(tmp_path / "p", tiny_model, data), "line 2", "control character")


@pytest.mark.parametrize("what", ["class folder", "image", "dicom", "labels.csv", "split folder"])
def test_a_symlink_out_of_the_data_folder_is_refused(
    what: str, images, tiny_model: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    x, y = images
    outside = class_folders(tmp_path / "outside", x, y)  # e.g. another study's images
    data = tmp_path / "data"
    if what == "class folder":
        class_folders(data, x[y == 0], y[y == 0])
        (data / "pneumonia").symlink_to(outside / "pneumonia")
    elif what == "split folder":
        data.mkdir()
        (data / "test").symlink_to(outside)
    elif what == "image":
        class_folders(data, x, y)
        (data / "normal" / "z.png").symlink_to(next((outside / "normal").iterdir()))
    elif what == "dicom":
        class_folders(data, x, y)
        write_dicom(tmp_path / "elsewhere.dcm", x[0])
        (data / "normal" / "z").symlink_to(tmp_path / "elsewhere.dcm")  # DICOM, no suffix
    else:
        class_folders(data, x, y)
        lines = ["path,label"] + [f"{NAMES[v]}/{i}.png,{v}" for i, v in enumerate(y)]
        (tmp_path / "elsewhere.csv").write_text("\n".join(lines) + "\n")
        (data / "labels.csv").symlink_to(tmp_path / "elsewhere.csv")
    refused(cli, project_on(tmp_path / "p", tiny_model, data), "out of the data folder", "symlink")


def _png_16bit_zeros(path: Path, side: int) -> None:
    """A valid side x side 16-bit grayscale PNG of zeros, written row by row (a few hundred KB
    on disk, side * side * 2 bytes once decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + 2 * side)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_a_13000_square_16bit_png_is_refused_from_its_header(
    images, tiny_model: Path, tmp_path: Path
) -> None:
    x, y = images
    data = class_folders(tmp_path / "data", x, y)
    _png_16bit_zeros(data / "normal" / "huge.png", 13000)
    with (
        pytest.warns(Image.DecompressionBombWarning),  # only a warning: Pillow would decode it
        Image.open(data / "normal" / "huge.png") as img,
    ):
        assert img.size == (13000, 13000) and img.mode.startswith("I;16")
    root = project_on(tmp_path / "p", tiny_model, data)
    # The peak RSS of the packager process alone, measured by its parent.
    probe = (
        "import resource, subprocess, sys\n"
        f"p = subprocess.run([sys.executable, '-m', 'packager.cli', *{BUILD!r}], "
        "capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
        "sys.stderr.write(p.stderr); sys.exit(p.returncode)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=600
    )
    assert_user_error(Result(p.returncode, p.stdout, p.stderr), "13000x13000", "pixel limit")
    assert "huge.png" in p.stderr
    assert int(p.stdout) < 700, f"peak RSS {p.stdout} MiB"  # was 1.86 GB


def test_a_tiff_past_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    """The same limit for TIFF: a small TIFF whose header is made to declare 12000x12000 (over
    Pillow's limit, under the twice-that where Pillow itself would refuse it)."""
    from packager.shipped.preprocess import ImageError, load_image

    path = tmp_path / "big.tif"
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(path)
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", raw, 4)[0]
    for k in range(struct.unpack_from("<H", raw, ifd)[0]):
        at = ifd + 2 + 12 * k
        if struct.unpack_from("<H", raw, at)[0] in (256, 257):  # ImageWidth, ImageLength
            struct.pack_into("<HII", raw, at + 2, 4, 1, 12000)  # LONG, 1 value
    path.write_bytes(bytes(raw))
    with pytest.warns(Image.DecompressionBombWarning), Image.open(path) as img:
        assert img.size == (12000, 12000)  # Pillow alone would only warn
    with pytest.raises(ImageError, match="12000x12000 pixels, more than"):
        load_image(path)


# ---- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("x = " + "[" * 200_000 + "]" * 200_000 + "\n", ("nests", "too deeply")),
        ("[selftest]\nsynthetic = 1000000000000\n", ("selftest.synthetic", "between 1 and 1000")),
        ("[selftest]\nnear_threshold = 5000\n", ("selftest.near_threshold", "between 0 and 1000")),
        ("[selftest]\nsamples = -1\n", ("selftest.samples", "between 0 and 1000")),
        (
            "[targets.cpu-onnxruntime]\nthreads = 1000000000\n",
            ("targets.cpu-onnxruntime.threads", "between 0 and 1024"),
        ),
    ],
    ids=["toml-200k-deep", "synthetic-1e12", "near-threshold", "samples", "threads-1e9"],
)
def test_config_out_of_range_is_one_line_with_the_range(
    extra: str, words: tuple[str, ...], project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    refused(cli, project(extra), *words)


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f", "\x1b"])
def test_a_model_name_with_a_bidi_or_control_character_is_refused(
    char: str, project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = project()
    toml = root / "packager.toml"
    escaped = f"\\u{ord(char):04X}"  # a TOML escape: the file itself stays plain ASCII
    toml.write_text(toml.read_text().replace('name = "tiny"', f'name = "tiny{escaped}gpj.exe"'))
    r = cli(*BUILD, cwd=root)
    assert_user_error(r, "model.name", "bidi")
    assert char not in r.stderr  # shown escaped, never as the raw character
    assert not (root / "dist").exists()
