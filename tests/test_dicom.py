"""Hospital data: DICOM renditions of the real PneumoniaMNIST test split, 16-bit and mixed-size
PNG folders, CSV labels with metadata, and hostile files. Renditions are built from the npz's
own pixels, so each must give exactly the npz's decisions through `packager build`."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from packager.core.data import load_dataset
from packager.core.errors import UserError
from packager.shipped.preprocess import Preprocess, load_image
from tests.conftest import DEFAULT_TOML, Result, assert_user_error, bundle_dir
from tests.dicom_files import (
    CR_STORAGE,
    PATIENT_ID,
    PATIENT_NAME,
    STUDY_DATE,
    write_dicom,
)

pytest.importorskip("pydicom")
NAMES = ["normal", "pneumonia"]
BUILD = ("build", "--target", "cpu-onnxruntime", "--no-bench")
BUNDLE = Path("dist/tiny-1.0.0/cpu-onnxruntime")


@pytest.fixture(scope="module")
def split(data_path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_path) as z:
        return z["test_images"], z["test_labels"].reshape(-1).astype(np.int64)


def write_project(root: Path, model: Path, data: Path, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "packager.toml").write_text(DEFAULT_TOML.format(model=model, data=data) + extra)
    return root


def run(*args: object, cwd: Path) -> Result:
    p = subprocess.run(
        [sys.executable, "-m", "packager.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Result(p.returncode, p.stdout, p.stderr)


def built(root: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(clinical section, labels, p(positive)) of the bundle a build wrote under root."""
    return bundle_numbers(root / BUNDLE)


def bundle_numbers(bundle: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    report = json.loads((bundle / "report.json").read_text())
    with np.load(bundle / "validation.npz") as v:
        return report["clinical"], v["labels"], v["probs"][:, 1]


@pytest.fixture(scope="module")
def npz_build(reference_bundle: Path) -> tuple[dict, np.ndarray, Path]:
    """BUILD on the npz with DEFAULT_TOML: the session's build of it (reference_bundle, shared
    read-only)."""
    clinical, _, probs = bundle_numbers(reference_bundle)
    return clinical, probs, reference_bundle


def class_folders(root: Path, images: np.ndarray, labels: np.ndarray, **kw: object) -> Path:
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        d = root / NAMES[label]
        d.mkdir(parents=True, exist_ok=True)
        write_dicom(d / f"{i:04d}.dcm", img, **kw)  # type: ignore[arg-type]
    return root


def mono2_8bit(root: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, str, list]:
    return class_folders(root, images, labels), "", folder_order(labels)


def mono1_8bit(root: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, str, list]:
    # White is low: the stored values are inverted, the file says so, the reader inverts back.
    inv = (255 - images).astype(np.uint8)
    return class_folders(root, inv, labels, photometric="MONOCHROME1"), "", folder_order(labels)


def ybr_full_8bit(root: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, str, list]:
    """Colour DICOM (as a scanner's secondary capture may be): YBR_FULL with neutral chroma
    (Cb = Cr = 128), which pydicom converts to R = G = B = Y."""
    ybr = np.stack([images, np.full_like(images, 128), np.full_like(images, 128)], axis=-1)
    return class_folders(root, ybr, labels, photometric="YBR_FULL"), "", folder_order(labels)


def csv_12bit(root: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, str, list]:
    """12-bit CR files without suffix, labelled by a CSV with metadata, whose own (wrong) window
    is overridden by [data.dicom] window: LINEAR center 2040.5 width 4081 maps 16*v back to v."""
    rows = ["path,label,site,sex"]
    (root / "studies").mkdir()
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        write_dicom(
            root / "studies" / f"{i:04d}",
            img.astype(np.uint16) * 16,
            bits_stored=12,
            window=(600.0, 400.0),
            sop_class=CR_STORAGE,
        )
        rows.append(f"studies/{i:04d},{NAMES[label]},site{i % 3},{'FM'[i % 2]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root, "[data.dicom]\nwindow = [2040.5, 4081]\n", list(range(len(labels)))


def folder_order(labels: np.ndarray) -> list[int]:
    """Where each image of a class-folder rendition sits in the npz (names sort by index)."""
    return [int(i) for c in range(len(NAMES)) for i in np.flatnonzero(labels == c)]


@pytest.mark.slow
@pytest.mark.parametrize("rendition", [mono2_8bit, mono1_8bit, ybr_full_8bit, csv_12bit])
def test_dicom_rendition_gives_the_npz_decisions(
    rendition: Callable, split, npz_build, tiny_model: Path, tmp_path: Path
) -> None:
    images, labels = split
    (tmp_path / "data").mkdir()
    data, extra, order = rendition(tmp_path / "data", images, labels)
    root = write_project(tmp_path / "project", tiny_model, data, extra)
    r = run(*BUILD, cwd=root)
    assert r.code == 0, r.stderr
    clinical, got_labels, probs = built(root)
    npz_clinical, npz_probs, _ = npz_build
    assert np.array_equal(got_labels, labels[order])
    threshold = 0.2
    assert np.array_equal(probs >= threshold, npz_probs[order] >= threshold)  # every decision
    for key in ("sensitivity", "specificity", "n", "positives"):
        assert clinical[key] == npz_clinical[key], key
    # A plain recount from the per-image probabilities, independent of the report code.
    pos = got_labels == 1
    assert clinical["sensitivity"] == pytest.approx(np.mean(probs[pos] >= threshold))
    assert clinical["specificity"] == pytest.approx(np.mean(probs[~pos] < threshold))
    for text in (PATIENT_NAME, PATIENT_ID, STUDY_DATE):  # never in any output
        assert text not in r.stdout + r.stderr
        assert all(
            text not in f.read_text(errors="ignore")
            for f in (root / BUNDLE).glob("*.*")
            if f.suffix in (".json", ".md", ".html")
        )


def test_dicom_bit_depths_and_compression_read_as_the_8bit_values(split, tmp_path: Path) -> None:
    """16-bit with rescale and a LINEAR_EXACT window, and compressed transfer syntaxes, all come
    back to the 8-bit pixels they were made from (what the builds above rely on)."""
    images = split[0][:8]
    for i, img in enumerate(images):
        stored = img.astype(np.uint16) * 200 + 1000  # modality value = 0.5 * stored - 500 = 100 v
        f = write_dicom(
            tmp_path / f"r{i}.dcm",
            stored,
            rescale=(0.5, -500.0),
            window=(12750.0, 25500.0),
            window_function="LINEAR_EXACT",
        )
        assert np.array_equal(load_image(f), img.astype(np.float32))
    # Colour: RGB as stored, and YBR_FULL through pydicom's conversion, both to R = G = B.
    img = images[0]
    rgb = np.stack([img] * 3, axis=-1)
    ybr = np.stack([img, np.full_like(img, 128), np.full_like(img, 128)], axis=-1)
    for name, pixels in (("RGB", rgb), ("YBR_FULL", ybr)):
        f = write_dicom(tmp_path / f"{name}.dcm", pixels, photometric=name)
        assert np.array_equal(load_image(f), rgb), name
    for syntax in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"):  # RLE, JPEG 2000 lossless
        from pydicom.pixels import get_decoder, get_encoder

        if not (get_encoder(syntax).is_available and get_decoder(syntax).is_available):
            pytest.skip(f"not validated: no encoder/decoder for {syntax} here")
        big = np.kron(images[0], np.ones((4, 4), np.uint8))  # JPEG 2000 needs >= 64 pixels
        f = write_dicom(tmp_path / f"c{syntax}.dcm", big, syntax=syntax)
        import pydicom

        assert pydicom.dcmread(f).file_meta.TransferSyntaxUID == syntax
        assert np.array_equal(load_image(f), big.astype(np.float32))


def test_16bit_range_is_stated_not_clipped(tmp_path: Path) -> None:
    pre = Preprocess(2, 1, "NCHW", 1 / 255, (0.0,), (1.0,), "float32")
    img = np.array([[0, 4095], [2048, 65535]], np.uint16)
    # 16-bit: 65535 is white, 4095 stays dark (1/16 of the range), nothing clipped to 255.
    assert pre(img[None])[0, 0] == pytest.approx(img / 65535, abs=1e-6)
    pre12 = Preprocess(2, 1, "NCHW", 1 / 255, (0.0,), (1.0,), "float32", uint16_bits=12)
    x12 = pre12(np.array([[[0, 4095], [4095, 0]]], np.uint16)).ravel().tolist()
    assert x12 == pytest.approx([0.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="12-bit range"):
        pre12(img[None])
    Image.fromarray(img).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").dtype == np.uint16  # read as 16-bit, not crushed to 8


def test_shipped_preprocess_needs_only_numpy_pillow_pydicom(tmp_path: Path) -> None:
    """The bundle's preprocess.py, alone in a folder, reads a DICOM the same way."""
    import packager.shipped.preprocess as mod

    (tmp_path / "preprocess.py").write_text(Path(mod.__file__).read_text())
    f = write_dicom(tmp_path / "x.dcm", np.arange(16, dtype=np.uint8).reshape(4, 4) * 16)
    code = (
        "import sys, json; sys.path.insert(0, '.'); import preprocess as p;"
        "a = p.load_image('x.dcm');"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('packager', 'onnxruntime', 'onnx'));"
        "print(json.dumps([a.ravel().tolist(), bad]))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    values, imported = json.loads(out.stdout)
    assert imported == [] and values == (np.arange(16) * 16).tolist()
    assert f.exists()


def test_csv_labels_and_metadata_are_kept(split, tmp_path: Path) -> None:
    images, labels = split
    rows = ["path,label,split,site,age_band"]
    for i in range(12):
        Image.fromarray(images[i]).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{labels[i]},{'test' if i < 8 else 'val'},s{i % 2},{40 + i}-{49 + i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path, "test", NAMES, columns=["site", "age_band"])
    assert ds.labels.tolist() == labels[:8].tolist()
    assert ds.metadata["site"].tolist() == [f"s{i % 2}" for i in range(8)]
    assert set(ds.metadata) == {"site", "age_band"}
    assert load_dataset(tmp_path, "test", NAMES).metadata == {}  # only named columns are read
    assert np.array_equal(ds.images, images[:8])
    sub = ds.subset(4, seed=0)
    assert len(sub.metadata["site"]) == 4
    (tmp_path / "labels.csv").write_text("path,label,patient_id\n0.png,0,x\n")
    with pytest.raises(UserError, match="patient identifier"):
        load_dataset(tmp_path, "test", NAMES, columns=["patient_id"])


@pytest.mark.slow
def test_mixed_size_16bit_png_folder_validates(
    split, npz_build, tiny_model: Path, tmp_path: Path
) -> None:
    """16-bit PNGs (v * 257: the same values on the 16-bit scale) at 28, 56 and 84 pixels, resized
    image by image as they load. The numbers are in the README ("Hospital data")."""
    images, labels = split
    data = tmp_path / "data"
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        k = 1 + i % 3
        big = np.kron(img.astype(np.uint16) * 257, np.ones((k, k), np.uint16))
        (data / NAMES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(big).save(data / NAMES[label] / f"{i:04d}.png")
    root = write_project(tmp_path / "project", tiny_model, data)
    r = run(*BUILD, "--json", cwd=root)
    assert r.code == 0, r.stderr
    clinical, got, probs = built(root)
    order = folder_order(labels)
    assert np.array_equal(got, labels[order])
    agree = np.mean((probs >= 0.2) == (npz_build[1][order] >= 0.2))
    print(
        f"mixed-size 16-bit PNG: {clinical['sensitivity']:.4f} sens, "
        f"{clinical['specificity']:.4f} spec, {agree:.4f} decisions agree with the npz"
    )
    assert clinical["sensitivity"] >= 0.98 and agree >= 0.97
    # The 28-pixel third is the npz's own pixels: exactly its decisions.
    same = [j for j, i in enumerate(order) if i % 3 == 0]
    assert np.array_equal(probs[same] >= 0.2, npz_build[1][np.array(order)[same]] >= 0.2)


# ---------------------------------------------------------------------------------------------
# Hostile files: each put into an otherwise good DICOM folder; exit 2, one line, nothing written.


def pydicom_file(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed here")
    return Path(path).read_bytes()


def h_multiframe(d: Path, good: bytes) -> None:
    (d / "multi.dcm").write_bytes(pydicom_file("SC_rgb_rle_2frame.dcm"))


def h_no_pixels(d: Path, good: bytes) -> None:
    (d / "nopix.dcm").write_bytes(pydicom_file("no_meta_group_length.dcm"))


def h_non_image(d: Path, good: bytes) -> None:
    (d / "dose.dcm").write_bytes(pydicom_file("rtdose_1frame.dcm"))


def h_palette(d: Path, good: bytes) -> None:
    (d / "palette.dcm").write_bytes(pydicom_file("examples_palette.dcm"))


def h_not_dicom(d: Path, good: bytes) -> None:
    (d / "notes.dcm").write_text("not an image at all\n")


def h_truncated(d: Path, good: bytes) -> None:
    (d / "cut.dcm").write_bytes(good[: len(good) - 300])


def h_pydicom_truncated(d: Path, good: bytes) -> None:
    (d / "mr.dcm").write_bytes(pydicom_file("MR_truncated.dcm"))


def h_wrong_vr_length(d: Path, good: bytes) -> None:
    """Patient Name's 2-byte length says 0xFFF0: the parse runs past the following elements."""
    tag = struct.pack("<HH", 0x0010, 0x0010) + b"PN"
    i = good.index(tag)
    (d / "vr.dcm").write_bytes(good[: i + 6] + struct.pack("<H", 0xFFF0) + good[i + 8 :])


def h_huge_header(d: Path, good: bytes) -> None:
    write_dicom(d / "huge.dcm", np.zeros((4, 4), np.uint8))
    raw = (d / "huge.dcm").read_bytes()
    for tag in ((0x0028, 0x0010), (0x0028, 0x0011)):  # Rows, Columns: US, 2 bytes
        i = raw.index(struct.pack("<HH", *tag) + b"US")
        raw = raw[: i + 8] + struct.pack("<H", 10000) + raw[i + 10 :]
    (d / "huge.dcm").write_bytes(raw)


HOSTILE = {
    "multiframe": (h_multiframe, ("multi.dcm", "multi-frame")),
    "no_pixel_data": (h_no_pixels, ("nopix.dcm", "no pixel data")),
    "non_image_sop": (h_non_image, ("dose.dcm", "not an image")),
    "palette_photometric": (h_palette, ("palette.dcm", "PALETTE COLOR")),
    "not_dicom": (h_not_dicom, ("notes.dcm", "not a DICOM file")),
    "truncated": (h_truncated, ("cut.dcm", "pixel data")),
    "pydicom_truncated": (h_pydicom_truncated, ("mr.dcm", "pixel data")),
    "wrong_vr_length": (h_wrong_vr_length, ("vr.dcm",)),
    "huge_header": (h_huge_header, ("huge.dcm", "10000x10000")),
}


def good_folder(d: Path, split) -> bytes:
    images, labels = split
    class_folders(d, images[:6], labels[:6])
    return next((d / NAMES[labels[0]]).iterdir()).read_bytes()


def assert_refused_cleanly(r: Result, root: Path, *words: str) -> None:
    assert_user_error(r, *words)
    for text in (PATIENT_NAME, PATIENT_ID, STUDY_DATE, "DOE"):
        assert text not in r.stderr
    dist = root / "dist"
    assert not dist.exists() or not [
        p for p in dist.rglob("*") if p.is_file() and ".lock" not in p.name
    ]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_dicom_is_refused(case: str, split, tiny_model: Path, tmp_path: Path) -> None:
    make, words = HOSTILE[case]
    data = tmp_path / "data"
    good = good_folder(data, split)
    make(data / NAMES[0], good)
    root = write_project(tmp_path / "project", tiny_model, data)
    assert_refused_cleanly(run(*BUILD, cwd=root), root, *words)


def test_csv_path_outside_the_data_folder_is_refused(
    split, tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    good_folder(data, split)
    inside = sorted(data.rglob("*.dcm"))[0]
    (tmp_path / "secret.dcm").write_bytes(inside.read_bytes())
    rel = inside.relative_to(data).as_posix()
    (data / "labels.csv").write_text(f"path,label\n{rel},normal\n../secret.dcm,normal\n")
    root = write_project(tmp_path / "project", tiny_model, data)
    assert_refused_cleanly(run(*BUILD, cwd=root), root, "../secret.dcm", "outside the data folder")


def test_compressed_without_decoder_names_the_package(tmp_path: Path) -> None:
    """The bundle's preprocess.py on a host with numpy, Pillow and pydicom but no pylibjpeg
    (the hospital without the dicom extra): a JPEG-LS file names the packages to install."""
    import numpy
    import PIL
    import pydicom

    import packager.shipped.preprocess as mod

    site = tmp_path / "site"
    site.mkdir()
    for pkg, dist in ((numpy, "numpy"), (PIL, "pillow"), (pydicom, "pydicom")):
        src = Path(pkg.__file__).parent
        for p in [src, *src.parent.glob(f"{dist}.libs"), *src.parent.glob(f"{dist}-*.dist-info")]:
            (site / p.name).symlink_to(p)
    (tmp_path / "preprocess.py").write_text(Path(mod.__file__).read_text())
    (tmp_path / "jls.dcm").write_bytes(pydicom_file("MR_small_jpeg_ls_lossless.dcm"))
    code = (
        f"import sys; sys.path[:0] = [{str(site)!r}, '.']; import preprocess\n"
        "try:\n    preprocess.load_image('jls.dcm')\n"
        "except preprocess.ImageError as exc:\n    print(exc)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('libjpeg', 'pylibjpeg'))))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    message, loaded = out.stdout.strip().splitlines()
    assert "no decoder is installed" in message and "pip install pylibjpeg" in message, message
    assert loaded == "[]"


# ---------------------------------------------------------------------------------------------
# Site acceptance: `packager validate BUNDLE --data SITE` with only the bundle.


def site_folder(root: Path, images: np.ndarray, labels: np.ndarray, flip: bool = False) -> Path:
    """MONOCHROME1 12-bit DICOM files without class folders, labelled by a CSV with metadata."""
    (root / "img").mkdir(parents=True)
    rows = ["path,label,site,manufacturer"]
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        stored = (255 - img.astype(np.uint16)) * 16  # 12-bit, white is low
        write_dicom(
            root / "img" / f"{i:04d}.dcm",
            stored,
            photometric="MONOCHROME1",
            bits_stored=12,
            window=(2040.5, 4081.0),
        )
        name = NAMES[1 - label if flip else label]
        rows.append(f"img/{i:04d}.dcm,{name},{'AB'[i % 2]},{'XYZ'[i % 3]}")
    (root / "site.csv").write_text("\n".join(rows) + "\n")
    return root


def tree_digest(d: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def test_site_acceptance_needs_only_the_bundle(split, npz_build, tmp_path: Path) -> None:
    import shutil

    images, labels = split
    _, npz_probs, built_bundle = npz_build
    # The hospital: a copy of the bundle, an empty working folder, no config, no model.
    bundle = tmp_path / "hospital" / "bundle"
    shutil.copytree(built_bundle, bundle)
    work = tmp_path / "hospital" / "work"
    work.mkdir()
    site = site_folder(tmp_path / "site", images, labels)
    before = tree_digest(bundle)
    r = run(
        "validate",
        bundle,
        "--data",
        site,
        "--labels",
        site / "site.csv",
        "--out",
        work / "reports",
        "--group-by",
        "site",
        "--json",
        cwd=work,
    )
    # 386/390 positives: sensitivity 0.9897, whose 95% lower bound 0.974 cannot clear 0.98.
    assert r.code == 1, r.stderr
    files = {k: Path(v) for k, v in r.json["files"].items()}  # names carry the UTC time
    assert {f.parent for f in files.values()} == {work / "reports"}
    report = json.loads(files["json"].read_text())
    assert files["md"].is_file()
    assert report["status"] == "failed" and report["verdict"] == "insufficient evidence"
    # Independent recount: the build's own npz probabilities on the same pixels.
    pos = labels == 1
    decided = npz_probs >= 0.2
    assert report["clinical"]["sensitivity"] == pytest.approx(decided[pos].mean())
    assert report["clinical"]["specificity"] == pytest.approx((~decided[~pos]).mean())
    with np.load(files["npz"]) as v:
        assert np.array_equal(v["probs"][:, 1] >= 0.2, decided)
        assert v["meta_site"].tolist() == ["AB"[i % 2] for i in range(len(labels))]
    a = report["subgroups"]["site"]["A"]
    assert a["n"] == (len(labels) + 1) // 2
    assert a["sensitivity"] == pytest.approx(
        decided[pos & (np.arange(len(labels)) % 2 == 0)].mean()
    )
    assert tree_digest(bundle) == before  # byte for byte as shipped
    assert run("verify", bundle, cwd=work).code == 0
    for text in (PATIENT_NAME, PATIENT_ID, STUDY_DATE):
        assert text not in r.stdout + r.stderr + json.dumps(report)


def test_site_acceptance_failing_gate_still_writes_its_report(
    split, npz_build, tmp_path: Path
) -> None:
    images, labels = split
    n = 80
    site = site_folder(tmp_path / "site", images[:n], labels[:n], flip=True)
    bundle = npz_build[2]
    before = tree_digest(bundle)
    r = run(
        "validate",
        bundle,
        "--data",
        site,
        "--labels",
        site / "site.csv",
        "--out",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert r.code == 1, r.stderr  # a gate failed: not bad input
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert report["status"] == "failed" and "min_sensitivity" in report["reason"]
    assert report["verdict"] == "fail"
    assert tree_digest(bundle) == before


@pytest.mark.slow
def test_site_acceptance_on_openvino_and_edge_bundles(
    split, default_build: Callable[[str], tuple[Path, Result]], tmp_path: Path
) -> None:
    from packager.core.registry import get

    names = ["cpu-openvino", "edge-ort"]
    for name in names:
        avail = get(name).availability()
        if not (avail.build.ok and avail.validate.ok):
            pytest.skip(
                f"not validated: {name} cannot build/validate here ({avail.build.reason or avail.validate.reason})"
            )
    images, labels = split
    site = site_folder(tmp_path / "site", images[:200], labels[:200])
    for name in names:
        # the session's `build --all --no-bench` with DEFAULT_TOML; a copy, as validate
        # writes its site reports beside the bundle
        root, r = default_build(name)
        [res] = [x for x in r.json["results"] if x["target"] == name]
        assert res["status"] == "passed", res
        bundle = Path(shutil.copytree(bundle_dir(root, name), tmp_path / "dist/tiny-1.0.0" / name))
        with np.load(bundle / "validation.npz") as v:
            decided = v["probs"][:200, 1] >= 0.2  # the build's decisions on the same pixels
        r = run(
            "validate",
            bundle,
            "--data",
            site,
            "--labels",
            site / "site.csv",
            "--json",
            cwd=tmp_path,
        )
        assert r.code == 1, r.stderr  # 200 images cannot support min_sensitivity 0.98
        report = r.json
        assert report["kind"] == "site-validation" and report["runtime"]
        assert report["verdict"] in ("insufficient evidence", "fail")
        pos = labels[:200] == 1
        assert report["clinical"]["sensitivity"] == pytest.approx(decided[pos].mean())
        assert run("verify", bundle, cwd=tmp_path).code == 0


def test_streamed_chunks_equal_the_loaded_dataset(split, tmp_path: Path) -> None:
    """The streaming path (packager validate) and the in-memory path (packager build) give the
    same tensors and the same dataset hash, on mixed sizes, bit depths and formats."""
    from packager.core.data import open_dataset
    from packager.runtime.stream import iter_chunks

    images, labels = split
    for i in range(21):
        d = tmp_path / NAMES[labels[i]]
        d.mkdir(exist_ok=True)
        if i % 3 == 0:
            write_dicom(d / f"{i:02d}.dcm", images[i])
        else:
            k = 1 + i % 2
            Image.fromarray(
                np.kron(images[i].astype(np.uint16) * 257, np.ones((k, k), np.uint16))
            ).save(d / f"{i:02d}.png")
    pre = Preprocess(32, 3, "NCHW", 1 / 255, (0.5,), (0.5,), "float32")
    whole = load_dataset(tmp_path, "test", NAMES, pre)
    chunks, digest = iter_chunks(open_dataset(tmp_path, "test", NAMES), pre, chunk=8, workers=2)
    streamed = np.concatenate(list(chunks))
    assert streamed.shape == (21, 3, 32, 32)
    np.testing.assert_array_equal(streamed, pre(whole.images))
    assert digest() == whole.sha256
