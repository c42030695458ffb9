"""Fuzzed bundle tarballs (through `verify` and `safe_extract`) and fuzzed dataset .npz bytes
(through `load_dataset`): a few hundred seeded cases each, every one a single mutation of a
valid input. Every outcome is a result or a one-line UserError, never another exception; some
cases must load or verify (the mutations reach the real code, not only its first check); and
a handful go through the CLI, which must answer with exit 0, 1 or 2 and no traceback."""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import struct
import tarfile
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from packager.builder.bundle import bundle_files, make_tarball
from packager.builder.verify import verify
from packager.core.data import load_dataset
from packager.core.errors import UserError
from tests.conftest import Result, _run, bundle_dir

CASES = 300
LABELS = ["normal", "pneumonia"]


def one_line(exc: UserError) -> str:
    text = str(exc).strip()
    assert text and "\n" not in text, text
    return text


# ---------------------------------------------------------------------------------------------
# Bundle tarballs


def seed_bundle(root: Path) -> Path:
    """A small bundle in the real layout (its manifest lists every file's sha256 and size)."""
    b = root / "tiny-cpu"
    (b / "sub").mkdir(parents=True)
    (b / "model.onnx").write_bytes(bytes(range(256)) * 8)
    (b / "report.json").write_text(json.dumps({"status": "passed", "clinical": {"n": 3}}))
    (b / "sub" / "notes.txt").write_text("per-layer notes\n" * 20)
    (b / "predict.py").write_text("print('hello')\n")
    (b / "predict.py").chmod(0o755)
    # A partial manifest (the tarball checks need only its file list), written directly: the
    # product's write_manifest accepts whole manifests only.
    manifest = {"schema_version": 1, "target": "cpu-onnxruntime", "files": bundle_files(b)}
    (b / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    make_tarball(b, root / "tiny-cpu.tar.gz")
    return root / "tiny-cpu.tar.gz"


def members_of(tar_gz: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tar_gz, "r:gz") as t:
        return [(m, t.extractfile(m).read() if m.isfile() else b"") for m in t.getmembers()]


def write_tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if info.isfile() or info.isreg() else None)
    return buf.getvalue()


def tar_mutation(
    rng: random.Random, members: list[tuple[tarfile.TarInfo, bytes]], escape: Path
) -> tuple[str, bytes]:
    """One mutation of the seed: returns (kind, .tar.gz bytes)."""
    ms = [
        (tarfile.TarInfo.frombuf(m.tobuf(tarfile.GNU_FORMAT), "utf-8", "strict"), d)
        for m, d in members
    ]
    for (new, _), (old, _) in zip(ms, members, strict=True):
        new.name, new.size, new.type, new.linkname, new.mode = (
            old.name,
            old.size,
            old.type,
            old.linkname,
            old.mode,
        )
    files = [i for i, (m, _) in enumerate(ms) if m.isfile()]
    kind = rng.choice(
        [
            "gz_flip",
            "gz_truncate",
            "tar_flip",
            "tar_truncate",
            "name",
            "link",
            "device",
            "duplicate",
            "drop",
            "extra",
            "content",
            "manifest",
            "mode",
            "size",
            "two_roots",
            "none",
        ]
    )
    raw: bytes | None = None
    if kind == "name":
        i = rng.randrange(len(ms))
        top = ms[i][0].name.split("/")[0]
        ms[i][0].name = rng.choice(
            [
                str(escape / "abs.txt"),
                f"{top}/../../escaped.txt",
                "../escaped.txt",
                f"{top}/" + "x" * 300,
                f"{top}/a\\..\\..\\b",
                f"{top}/./model.onnx",
                f"{top}//sub",
                f"{top}/ünïcode.txt",
                "./" + ms[i][0].name,
            ]
        )
    elif kind == "link":
        i = rng.choice(files)
        m = ms[i][0]
        m.type = rng.choice([tarfile.SYMTYPE, tarfile.LNKTYPE])
        m.linkname = rng.choice(
            [
                str(escape / "target"),
                "../../etc/passwd",
                "model.onnx",
                m.name.split("/")[0] + "/report.json",
            ]
        )
        m.size = 0
        ms[i] = (m, b"")
    elif kind == "device":
        i = rng.choice(files)
        m = ms[i][0]
        m.type, m.size = rng.choice([tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]), 0
        ms[i] = (m, b"")
    elif kind == "duplicate":
        m, d = ms[rng.choice(files)]
        dup = tarfile.TarInfo(m.name)
        dup.size, dup.mode = 5, 0o644
        ms.append((dup, b"other"))
    elif kind == "drop":
        del ms[rng.choice(files)]
    elif kind == "extra":
        top = ms[0][0].name.split("/")[0]
        extra = tarfile.TarInfo(f"{top}/{rng.choice(['added.py', 'sub/added.bin', '.hidden'])}")
        extra.size = 3
        ms.append((extra, b"abc"))
    elif kind == "content":
        i = rng.choice(files)
        m, d = ms[i]
        b = bytearray(d) or bytearray(b"\0")
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        m.size = len(b)
        ms[i] = (m, bytes(b))
    elif kind == "manifest":
        i = next(i for i, (m, _) in enumerate(ms) if m.name.endswith("/manifest.json"))
        m, d = ms[i]
        new = rng.choice(
            [
                b"",
                b"{",
                b"[]",
                b'{"files": []}',
                b'{"files": {"model.onnx": 3}}',
                b"\xff\xfe",
                b'{"files": {"../x": {"sha256": "0"}}}',
                json.dumps({"x": 1}).encode(),
                d.replace(b'"sha256"', b'"sha257"', 1),
            ]
        )
        m.size = len(new)
        ms[i] = (m, new)
    elif kind == "mode":  # odd but harmless metadata: the bundle still verifies
        i = rng.choice(files)
        ms[i][0].mode = rng.choice([0o000, 0o4755, 0o777, 0o600])
        ms[i][0].mtime = rng.choice([0, 2**33, 1])
    elif kind == "size":  # a header whose size disagrees with the data that follows
        i = rng.choice(files)
        m, d = ms[i]
        raw = write_tar(ms)
        # rewrite the size field (offset 124, 12 octal bytes) of that member's header block
        at = raw.find(m.name.encode()[:100])
        if at >= 0:
            field = f"{rng.choice([0, len(d) + 1, 8**11 - 1]):011o}\0".encode()
            raw = raw[: at + 124] + field + raw[at + 136 :]
    elif kind == "two_roots":
        other = tarfile.TarInfo("elsewhere/file.txt")
        other.size = 1
        ms.append((other, b"x"))
    if raw is None:
        raw = write_tar(ms)
    if kind == "tar_flip":
        b = bytearray(raw)
        at = rng.randrange(len(b)) if rng.random() < 0.5 else rng.randrange(0, 512)
        b[at] ^= 1 << rng.randrange(8)
        raw = bytes(b)
    elif kind == "tar_truncate":
        raw = raw[: rng.randrange(len(raw))]
    gz = gzip.compress(raw, mtime=0)
    if kind == "gz_flip":
        b = bytearray(gz)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        gz = bytes(b)
    elif kind == "gz_truncate":
        gz = gz[: rng.randrange(len(gz))]
    return kind, gz


def test_fuzz_bundle_tarballs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = seed_bundle(tmp_path / "seed")
    assert verify(seed).ok
    members = members_of(seed)
    scratch = tmp_path / "scratch"  # where verify extracts; must be empty after every case
    escape = tmp_path / "escape"  # where a hostile entry would land; must stay empty
    scratch.mkdir()
    escape.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rng = random.Random(19)
    outcomes: Counter[str] = Counter()
    kept: dict[str, Path] = {}
    case = tmp_path / "case.tar.gz"
    for n in range(CASES):
        kind, data = tar_mutation(rng, members, escape)
        case.write_bytes(data)
        try:
            result = verify(case)
            outcome = "ok" if result.ok else "problems"
            if not result.ok:
                assert result.problems and all("\n" not in p for p in result.problems)
        except UserError as exc:
            one_line(exc)
            outcome = "user_error"
        outcomes[outcome] += 1
        outcomes[f"{kind}:{outcome}"] += 1
        if outcome not in kept:
            kept[outcome] = tmp_path / f"{outcome}-{n}.tar.gz"
            shutil.copy(case, kept[outcome])
        assert list(scratch.iterdir()) == [], (n, kind, list(scratch.rglob("*")))
        assert list(escape.iterdir()) == [], (n, kind, list(escape.iterdir()))
        assert (
            not (tmp_path / "escaped.txt").exists()
            and not (tmp_path.parent / "escaped.txt").exists()
        )
    summary = dict(outcomes)
    # Each class of outcome is reached: refused, verified with problems, and verified clean.
    assert outcomes["ok"] >= 10 and outcomes["problems"] >= 10, summary
    assert outcomes["user_error"] >= CASES // 4, summary
    # Hostile paths, links and devices are always refused, never extracted.
    for kind in ("link", "device", "two_roots"):
        assert outcomes[f"{kind}:ok"] == outcomes[f"{kind}:problems"] == 0, summary
    # A handful through the real CLI: 0 clean, 1 problems, 2 refused; one line, no traceback.
    codes = {"ok": 0, "problems": 1, "user_error": 2}
    for outcome, path in kept.items():
        r = _run(["verify", str(path)], tmp_path)
        assert r.code == codes[outcome] and "Traceback" not in r.stderr, (outcome, r)
        if r.code:
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------------------------------------
# Dataset .npz bytes


def npy_bytes(header: dict, payload: bytes) -> bytes:
    """A .npy file with exactly this header (format 1.0), whatever the payload holds."""
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


def npy_of(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_npz(members: dict[str, bytes], compressed: bool) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# Changes that keep the dataset valid: the loader must accept them and read the same labels.
VALID = {
    "labels_big_endian": lambda im, lb: (im, lb.astype(">i8")),
    "labels_flat_int32": lambda im, lb: (im, lb.reshape(-1).astype(np.int32)),
    "labels_uint8": lambda im, lb: (im, lb.astype(np.uint8)),
    "rgb": lambda im, lb: (np.repeat(im[..., None], 3, -1), lb),
    "one_channel_axis": lambda im, lb: (im[..., None], lb),
    "fortran_order": lambda im, lb: (np.asfortranarray(im), lb),
}
# Changes to one array that the loader must refuse.
INVALID = {
    "images_16bit": lambda im, lb: (im.astype(np.uint16) * 257, lb),
    "images_big_endian_16bit": lambda im, lb: (im.astype(">u2"), lb),
    "images_float": lambda im, lb: (im.astype(np.float32), lb),
    "images_2d": lambda im, lb: (im[0], lb),
    "images_4_channels": lambda im, lb: (np.repeat(im[..., None], 4, -1), lb),
    "images_empty": lambda im, lb: (im[:0], lb[:0]),
    "images_zero_width": lambda im, lb: (im[:, :, :0], lb),
    "labels_float": lambda im, lb: (im, lb.astype(np.float32)),
    "labels_out_of_range": lambda im, lb: (im, lb + 2),
    "labels_negative": lambda im, lb: (im, lb - 1),
    "labels_multilabel": lambda im, lb: (im, np.repeat(lb, 2, 1)),
    "labels_short": lambda im, lb: (im, lb[:-1]),
    "labels_strings": lambda im, lb: (im, lb.astype("<U1")),
}


def npz_mutation(
    rng: random.Random, images: np.ndarray, labels: np.ndarray
) -> tuple[str, bytes, bool | None]:
    """(kind, .npz bytes, whether it must load: True, False, or None when either may happen)."""
    compressed = rng.random() < 0.5
    members = {
        "train_images.npy": npy_of(images[:4]),
        "train_labels.npy": npy_of(labels[:4]),
        "test_images.npy": npy_of(images),
        "test_labels.npy": npy_of(labels),
    }
    kind = rng.choice(
        ["valid", "invalid", "header", "key", "byte_flip", "truncate", "payload_flip", "none"]
    )
    expect: bool | None = None
    if kind == "none":
        expect = True
    elif kind == "valid":
        name = rng.choice(sorted(VALID))
        im, lb = VALID[name](images, labels)
        members["test_images.npy"], members["test_labels.npy"] = npy_of(im), npy_of(lb)
        kind, expect = f"valid:{name}", True
    elif kind == "invalid":
        name = rng.choice(sorted(INVALID))
        im, lb = INVALID[name](images, labels)
        members["test_images.npy"], members["test_labels.npy"] = npy_of(im), npy_of(lb)
        kind, expect = f"invalid:{name}", False
    elif kind == "header":  # the .npy header says something other than what the bytes hold
        key = rng.choice(["test_images.npy", "test_labels.npy"])
        arr = images if key == "test_images.npy" else labels
        header = {"descr": arr.dtype.str, "fortran_order": False, "shape": arr.shape}
        change = rng.choice(["descr", "shape", "huge", "negative", "extra_key", "object"])
        if change == "descr":
            header["descr"] = rng.choice(["<u2", ">u2", "<f8", "|b1", "<U3", "|S2", "V3", "x"])
        elif change == "shape":
            header["shape"] = tuple(s + rng.choice([-1, 1, 5]) for s in arr.shape)
        elif change == "huge":  # large declared dimensions over a small payload
            header["shape"] = (10**6, 10**6) + arr.shape[2:]
        elif change == "negative":
            header["shape"] = (-1, *arr.shape[1:])
        elif change == "extra_key":
            header["extra"] = 1
        else:
            header["descr"] = "|O"
        members[key] = npy_bytes(header, np.ascontiguousarray(arr).tobytes())
        kind = f"header:{change}"
    elif kind == "key":
        change = rng.choice(["drop_images", "drop_labels", "rename", "no_suffix", "extra"])
        if change == "drop_images":
            del members["test_images.npy"]
        elif change == "drop_labels":
            del members["test_labels.npy"]
        elif change == "rename":
            members["test_image.npy"] = members.pop("test_images.npy")
        elif change == "no_suffix":  # np.load names members with or without .npy
            members["test_images"] = members.pop("test_images.npy")
        else:
            members["notes.txt"] = b"not an array"
        expect = {"extra": True, "no_suffix": True}.get(change, False)
        kind = f"key:{change}"
    data = write_npz(members, compressed)
    if kind == "byte_flip":
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        data = bytes(b)
    elif kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "payload_flip" and not compressed:  # an image pixel: still a valid dataset
        at = data.find(npy_of(images)[:10]) + len(npy_of(images)) - rng.randrange(1, images.size)
        b = bytearray(data)
        b[at] ^= 0xFF
        data = bytes(b)
    return kind, data, expect


@pytest.fixture(scope="module")
def real_split(data_path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_path) as d:
        return d["test_images"][:12].copy(), d["test_labels"][:12].copy()


def test_fuzz_dataset_npz_bytes(
    real_split: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    default_build: Callable[[str], tuple[Path, Result]],
) -> None:
    images, labels = real_split
    rng = random.Random(19)
    outcomes: Counter[str] = Counter()
    kept: dict[str, Path] = {}
    path = tmp_path / "case.npz"
    for n in range(CASES):
        kind, data, expect = npz_mutation(rng, images, labels)
        path.write_bytes(data)
        try:
            ds = load_dataset(path, "test", LABELS)
        except UserError as exc:
            one_line(exc)
            assert expect is not True, (kind, str(exc))
            outcome = "user_error"
        else:
            assert expect is not False, kind
            assert ds.images.dtype == np.uint8 and ds.images.ndim in (3, 4)
            assert ds.labels.dtype == np.int64 and len(ds.labels) == len(ds.images) > 0
            assert ds.labels.min() >= 0 and ds.labels.max() < len(LABELS)
            if kind.startswith(("valid", "none", "key:", "payload_flip")):
                np.testing.assert_array_equal(ds.labels, labels.reshape(-1))
            outcome = "ok"
        outcomes[outcome] += 1
        outcomes[kind.split(":")[0]] += 1
        if outcome not in kept:
            kept[outcome] = tmp_path / f"{outcome}-{n}.npz"
            shutil.copy(path, kept[outcome])
    summary = dict(outcomes)
    assert outcomes["ok"] >= CASES // 5 and outcomes["user_error"] >= CASES // 4, summary
    assert outcomes["valid"] >= 20 and outcomes["header"] >= 20, summary
    # Through the CLI: `packager validate` on a copy of a real bundle reads the data first.
    root, r = default_build("cpu-onnxruntime")
    assert r.code == 0, r.stderr
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir(root, "cpu-onnxruntime"), bundle)
    for outcome, npz in kept.items():
        r = _run(["validate", str(bundle), "--data", str(npz)], tmp_path)
        assert "Traceback" not in r.stderr, (outcome, r)
        if outcome == "ok":  # 12 images: the report completes, whatever the gates say
            assert r.code in (0, 1), (outcome, r)
        else:
            assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, (outcome, r)
