"""The self-test exercises the shipped preprocessing (issue 24, item 4) and its decision and
tolerance checks are the ones that decide (issue 28's self-test survivors).

Every check runs a real built bundle's own `predict.py --self-test` and compares it with an
independent computation: raw files decoded with Pillow and pydicom's parser, the DICOM window
from the standard's formula, the model run directly on ONNX Runtime, decisions recounted from
selftest.npz with numpy."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from tests.conftest import DEFAULT_TOML, _run, bundle_dir

pydicom = pytest.importorskip("pydicom")

# The floors as the issue states them, written out independently of packager.runtime.golden.FLOORS.
FLOORS = {"fp32": 1e-4, "fp16": 1e-3, "int8": 5e-3, "bf16": 2e-2}
PROXY_FLOOR = 1e-2
ALL_FORMATS = '["png", "jpeg", "tiff", "bmp", "dicom"]'


def _build(root: Path, model: Path, data: Path, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "packager.toml").write_text(DEFAULT_TOML.format(model=model, data=data) + extra)
    r = _run(["build", "-t", "cpu-onnxruntime", "--no-bench", "--quiet"], root)
    assert r.code == 0, r.stderr
    return bundle_dir(root, "cpu-onnxruntime")


@pytest.fixture(scope="module")
def png_bundle(reference_bundle: Path) -> Path:
    """The default build (the session's reference_bundle, read-only): reads PNG, JPEG, TIFF and
    BMP, not DICOM."""
    return reference_bundle


@pytest.fixture(scope="module")
def dicom_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_path: Path
) -> Path:
    extra = f"[preprocess]\nformats = {ALL_FORMATS}\n"
    return _build(tmp_path_factory.mktemp("golden-dicom"), tiny_model, data_path, extra)


BUNDLES = ("png_bundle", "dicom_bundle")


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, symlinks=False)
    return dest


def _rehash(bundle: Path) -> None:
    """What an attacker or a careless re-packager does: every manifest entry agrees again."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        data = (bundle / name).read_bytes()
        meta["sha256"], meta["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _selftest(bundle: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    rec = bundle.with_name(bundle.name + ".acceptance.json")
    out = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), "--self-test", "--record", str(rec)],
        capture_output=True,
        text=True,
    )
    record = json.loads(rec.read_text()) if rec.exists() else {}
    return out, record


def _check(record: dict, name: str) -> dict:
    return next(c for c in record["checks"] if c["name"] == name)


def _golden(bundle: Path) -> dict[str, np.ndarray]:
    with np.load(bundle / "selftest.npz", allow_pickle=False) as g:
        return {k: g[k] for k in g.files}


def _raw_files(g: dict[str, np.ndarray]) -> list[bytes]:
    ends = g["raw_ends"].tolist()
    return [g["raw_bytes"][a:b].tobytes() for a, b in zip([0, *ends[:-1]], ends, strict=True)]


# --- the raw cases: each declared form, decoded independently ----------------------------------


def _display(data: bytes, uint16_top: int) -> np.ndarray:
    """One raw file on the 0..255 display scale, without the bundle's preprocess.py: Pillow for
    image files; for DICOM, pydicom only to parse, the linear window from DICOM PS3.3 C.11.2.1.2
    and MONOCHROME1 inverted."""
    if data[128:132] == b"DICM":
        ds = pydicom.dcmread(io.BytesIO(data))
        stored = np.frombuffer(ds.PixelData, np.uint16 if ds.BitsAllocated == 16 else np.uint8)
        x = stored[: ds.Rows * ds.Columns].reshape(ds.Rows, ds.Columns).astype(np.float64)
        x = x * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        if "WindowCenter" in ds:
            c, w = float(ds.WindowCenter), float(ds.WindowWidth)
            y = np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0, 0.0, 255.0)
        else:  # no window: the modality output range of the stored bits, linearly
            top = 2**ds.BitsStored - 1
            lo = float(ds.get("RescaleIntercept", 0))
            y = (x - lo) * 255.0 / (top * float(ds.get("RescaleSlope", 1)))
        return 255.0 - y if ds.PhotometricInterpretation == "MONOCHROME1" else y
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img)
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) * 255.0 / uint16_top
    return arr.astype(np.float64)


def _tensor(display: np.ndarray, pre: dict) -> np.ndarray:
    img = display.astype(np.float32)
    # RGB stays RGB (the tiny model takes 3 channels); gray is repeated after the resize
    planes = [img[..., c] for c in range(3)] if img.ndim == 3 else [img]
    size = pre["size"]
    resized = [
        np.asarray(Image.fromarray(p, mode="F").resize((size, size), Image.Resampling.BILINEAR))
        for p in planes
    ]
    chw = np.stack(resized * (3 // len(resized)))
    x = (chw * np.float32(pre["scale"]) - np.float32(pre["mean"][0])) / np.float32(pre["std"][0])
    return x[None].astype(np.float32)


def _ort_probs(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: r[None]})[0] for r in x])
    s = out.astype(np.float64)
    if np.allclose(s.sum(axis=1), 1.0, atol=1e-5) and (s >= 0).all():
        return s
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_golden_set_holds_each_declared_form(dicom_bundle: Path, png_bundle: Path) -> None:
    """The raw files are what they claim: 8- and 16-bit PNG, RGB PNG, JPEG, 16-bit TIFF, BMP,
    and on the DICOM bundle MONOCHROME2, MONOCHROME1 and 12-bit with rescale and a window."""
    forms = []
    for bundle in (png_bundle, dicom_bundle):
        g = _golden(bundle)
        seen = set()
        for data in _raw_files(g):
            if data[128:132] == b"DICM":
                ds = pydicom.dcmread(io.BytesIO(data))
                assert "PatientName" not in ds and "PatientID" not in ds
                form = f"dicom {ds.PhotometricInterpretation} {ds.BitsStored}"
                if "RescaleSlope" in ds and "WindowCenter" in ds:
                    form += " rescale window"
                seen.add(form)
            else:
                with Image.open(io.BytesIO(data)) as img:
                    seen.add(f"{img.format} {img.mode}")
        forms.append(seen)
    png, dicom = forms
    assert {"PNG L", "PNG I;16", "PNG RGB", "JPEG L", "TIFF I;16", "BMP L"} == png
    assert dicom == png | {
        "dicom MONOCHROME2 8",
        "dicom MONOCHROME1 16",
        "dicom MONOCHROME2 12 rescale window",
    }


@pytest.mark.parametrize("which", BUNDLES)
def test_raw_golden_probabilities_recount(which: str, request: pytest.FixtureRequest) -> None:
    """raw_probs equal the model on ONNX Runtime fed by an independent decoding of each file."""
    bundle = request.getfixturevalue(which)
    g = _golden(bundle)
    pre = json.loads((bundle / "preprocess.json").read_text())
    top = 2 ** pre["uint16_bits"] - 1
    x = np.concatenate([_tensor(_display(d, top), pre) for d in _raw_files(g)])
    got = _ort_probs(bundle / "model.onnx", x)
    tol = json.loads((bundle / "selftest.json").read_text())["tolerance"]
    np.testing.assert_allclose(got, g["raw_probs"], atol=tol, rtol=0)


# --- a changed preprocessing with a re-hashed manifest is rejected -----------------------------


def _edit_json(bundle: Path) -> None:
    pre = json.loads((bundle / "preprocess.json").read_text())
    pre["mean"], pre["std"] = [0.45], [0.22]
    (bundle / "preprocess.json").write_text(json.dumps(pre))


def _edit_py(bundle: Path) -> None:
    """The same numbers, changed in the code instead of the parameters."""
    src = (bundle / "preprocess.py").read_text()
    old = 'data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])'
    assert old in src
    (bundle / "preprocess.py").write_text(
        src.replace(old, 'data["mean"], data["std"] = (0.45,), (0.22,)')
    )


@pytest.mark.parametrize("edit", (_edit_json, _edit_py), ids=("preprocess.json", "preprocess.py"))
@pytest.mark.parametrize("which", BUNDLES)
def test_changed_preprocessing_is_rejected(
    which: str, edit: object, request: pytest.FixtureRequest, tmp_path: Path, data_path: Path
) -> None:
    bundle = request.getfixturevalue(which)
    out, record = _selftest(_copy(bundle, tmp_path / "ok"))
    assert out.returncode == 0 and record["verdict"] == "accepted", out.stdout + out.stderr
    assert _check(record, "preprocessing")["status"] == "passed"

    changed = _copy(bundle, tmp_path / "changed")
    edit(changed)  # type: ignore[operator]
    _rehash(changed)
    out, record = _selftest(changed)
    assert out.returncode == 1, out.stdout + out.stderr
    assert record["verdict"] == "rejected"
    assert _check(record, "manifest")["status"] == "passed"  # the manifest agrees: not the catch
    probs = _check(record, "probabilities")
    assert probs["status"] == "failed"
    # Only raw files (the shipped preprocessing's inputs) can differ: x is stored preprocessed.
    n_tensor = len(_golden(bundle)["x"])
    assert probs["failing_cases"] and min(probs["failing_cases"]) >= n_tensor
    assert "self-test FAILED" in out.stdout
    # What the edit does to normal images of the real test split: other probabilities.
    with np.load(data_path) as d:
        normal = d["test_images"][d["test_labels"].reshape(-1) == 0][:5]
    images = [tmp_path / f"normal-{i}.png" for i in range(len(normal))]
    for path, img in zip(images, normal, strict=True):
        Image.fromarray(img).save(path)
    p = [
        [
            json.loads(line)["probabilities"]["pneumonia"]
            for line in subprocess.run(
                [sys.executable, str(b / "predict.py"), *map(str, images)],
                capture_output=True,
                text=True,
            ).stdout.splitlines()
        ]
        for b in (tmp_path / "ok", changed)
    ]
    assert np.abs(np.subtract(*p)).max() > 0.05, p


def test_changed_dicom_window_is_rejected_on_the_dicom_cases(
    dicom_bundle: Path, tmp_path: Path
) -> None:
    """A DICOM-only change (the configured window) is caught by the DICOM cases alone."""
    changed = _copy(dicom_bundle, tmp_path / "changed")
    pre = json.loads((changed / "preprocess.json").read_text())
    pre["dicom_window"] = [1200.0, 2400.0]
    (changed / "preprocess.json").write_text(json.dumps(pre))
    _rehash(changed)
    out, record = _selftest(changed)
    assert out.returncode == 1 and record["verdict"] == "rejected", out.stdout
    g = _golden(dicom_bundle)
    kinds = np.concatenate([g["kinds"], g["raw_kinds"]])
    failing = _check(record, "probabilities")["failing_cases"]
    assert failing and all(kinds[i].startswith("dicom") for i in failing)


def test_an_unreadable_raw_file_is_named(png_bundle: Path, tmp_path: Path) -> None:
    changed = _copy(png_bundle, tmp_path / "changed")
    pre = json.loads((changed / "preprocess.json").read_text())
    pre["uint16_bits"] = 12  # the 16-bit cases hold values above 4095: refused, not clipped
    (changed / "preprocess.json").write_text(json.dumps(pre))
    _rehash(changed)
    out, record = _selftest(changed)
    assert out.returncode == 1 and record["verdict"] == "rejected"
    check = _check(record, "preprocessing")
    g = _golden(png_bundle)
    sixteen = [
        len(g["x"]) + j for j, k in enumerate(g["raw_kinds"]) if k.endswith("16-bit")
    ]  # png 16-bit and tiff 16-bit
    assert [u["case"] for u in check["unreadable"]] == sixteen
    assert "above the 12-bit range" in out.stdout


# --- what the bundle reads: requirements, --help, refusal --------------------------------------


def test_dicom_bundle_pins_pydicom(dicom_bundle: Path, png_bundle: Path) -> None:
    from importlib.metadata import version

    assert f"pydicom=={version('pydicom')}" in (dicom_bundle / "requirements.txt").read_text()
    assert "pydicom" not in (png_bundle / "requirements.txt").read_text()
    meta = json.loads((dicom_bundle / "selftest.json").read_text())
    assert meta["formats"] == ["png", "jpeg", "tiff", "bmp", "dicom"]
    assert meta["cases"]["dicom MONOCHROME1 16-bit window"] == 1


@pytest.mark.parametrize("which", BUNDLES)
def test_help_names_the_formats(which: str, request: pytest.FixtureRequest) -> None:
    bundle = request.getfixturevalue(which)
    out = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), "--help"], capture_output=True, text=True
    )
    text = " ".join(out.stdout.split())
    listed = json.loads((bundle / "preprocess.json").read_text())["formats"]
    assert f"reads {', '.join(f.upper() for f in listed)} " in text
    assert ("DICOM" in text) == (which == "dicom_bundle")


def test_an_undeclared_format_is_refused(png_bundle: Path, tmp_path: Path) -> None:
    from tests.dicom_files import PATIENT_NAME, write_dicom

    dcm = write_dicom(tmp_path / "x.dcm", np.full((32, 32), 100, np.uint8))
    out = subprocess.run(
        [sys.executable, str(png_bundle / "predict.py"), str(dcm)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "does not read DICOM" in out.stderr and PATIENT_NAME not in out.stderr


# --- issue 28: the decision check decides; the tolerance is pinned ----------------------------


def test_a_decision_flip_within_tolerance_is_rejected(png_bundle: Path, tmp_path: Path) -> None:
    """runtime.json's threshold nudged across a near-threshold case: every probability is
    within tolerance, so only the decision check can reject. Recounted with numpy."""
    g = _golden(png_bundle)
    meta = json.loads((png_bundle / "selftest.json").read_text())
    recorded, tol, pos = meta["threshold"], meta["tolerance"], meta["positive_index"]
    golden = np.concatenate([g["probs"], g["raw_probs"]])[:, pos]
    near = np.flatnonzero(g["kinds"] == "near-threshold")
    above = near[golden[near] > recorded + tol]
    assert len(above), "the golden set has a near-threshold case above the threshold"
    case = above[np.argmin(golden[above])]
    nudged = float(golden[case] + tol / 2)  # just above it: its decision flips, p does not move

    changed = _copy(png_bundle, tmp_path / "changed")
    runtime = json.loads((changed / "runtime.json").read_text())
    runtime["threshold"] = nudged
    (changed / "runtime.json").write_text(json.dumps(runtime))
    _rehash(changed)
    out, record = _selftest(changed)

    decided = np.abs(golden - recorded) > tol
    flips = np.flatnonzero(decided & ((golden >= nudged) != (golden >= recorded)))
    assert case in flips
    probs, decisions = _check(record, "probabilities"), _check(record, "decisions")
    assert probs["status"] == "passed" and probs["failing"] == 0
    assert decisions["status"] == "failed"
    assert decisions["differing_cases"] == flips.tolist()
    assert decisions["cases"] == int(decided.sum())
    assert out.returncode == 1 and record["verdict"] == "rejected"
    assert f"0 of {len(golden)} cases differ" in out.stdout
    assert f"and {len(flips)} decisions differ" in out.stdout


@pytest.mark.parametrize("precision", sorted(FLOORS))
def test_floors_are_pinned_per_precision(precision: str) -> None:
    from packager.runtime.golden import floor_for

    assert floor_for(precision, proxy=False) == FLOORS[precision]
    assert floor_for(precision, proxy=True) == max(FLOORS[precision], PROXY_FLOOR)


@pytest.mark.parametrize(
    ("precision", "floor"), [("int8-static", 5e-3), ("int4", 5e-3), ("fp16-mixed", 1e-3)]
)
def test_a_precision_variant_or_unknown_one_gets_its_family_or_int8s_floor(
    precision: str, floor: float
) -> None:
    from packager.runtime.golden import floor_for

    assert floor_for(precision, proxy=False) == floor
    assert floor_for(precision, proxy=True) == max(floor, PROXY_FLOOR)


def _tolerance_from_fields(meta: dict) -> float:
    precision = meta["precision"]
    base = next(v for k, v in FLOORS.items() if precision.startswith(k))
    floor = max(base, PROXY_FLOOR) if meta["proxy"] else base
    assert meta["floor"] == floor
    m = meta["measured"]
    return max(floor, 2 * max(m["repeat_max_abs_diff"], m["batch1_max_abs_diff"]))


@pytest.mark.parametrize("which", BUNDLES)
def test_tolerance_is_the_formula(which: str, request: pytest.FixtureRequest) -> None:
    bundle = request.getfixturevalue(which)
    meta = json.loads((bundle / "selftest.json").read_text())
    assert meta["tolerance"] == _tolerance_from_fields(meta)


@pytest.mark.parametrize("target", ("cpu-openvino", "edge-ort"))
def test_tolerance_is_the_formula_on_other_targets(default_build: object, target: str) -> None:
    root, _ = default_build(target)  # type: ignore[operator]
    meta = json.loads((bundle_dir(root, target) / "selftest.json").read_text())
    assert meta["tolerance"] == _tolerance_from_fields(meta)


def _nudge_for(golden_pos: np.ndarray, target_dp: float) -> float:
    """The positive-logit shift that moves the largest |dp| of these golden probabilities to
    target_dp (two classes: p = sigmoid(logit difference)), by bisection."""
    p = np.clip(golden_pos, 1e-12, 1 - 1e-12)  # saturated cases cannot move anyway
    z = np.log(p) - np.log1p(-p)
    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        dp = np.max(np.abs(1 / (1 + np.exp(-(z + mid))) - golden_pos))
        lo, hi = (mid, hi) if dp < target_dp else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("times", (10.0, 0.3))
def test_a_slightly_perturbed_model(png_bundle: Path, tmp_path: Path, times: float) -> None:
    """The final bias nudged so that the largest |dp| is `times` the tolerance: 10x is rejected,
    0.3x accepted; the record's max |dp| matches the prediction."""
    g = _golden(png_bundle)
    meta = json.loads((png_bundle / "selftest.json").read_text())
    tol, pos = meta["tolerance"], meta["positive_index"]
    golden = np.concatenate([g["probs"], g["raw_probs"]])[:, pos]
    shift = _nudge_for(golden, times * tol)

    changed = _copy(png_bundle, tmp_path / "changed")
    model = onnx.load(str(changed / "model.onnx"))
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    init = next(i for i in model.graph.initializer if i.name == gemm.input[2])
    bias = numpy_helper.to_array(init).copy()
    bias[pos] += np.float32(shift)
    init.CopyFrom(numpy_helper.from_array(bias, init.name))
    onnx.save(model, str(changed / "model.onnx"))
    _rehash(changed)
    out, record = _selftest(changed)

    probs = _check(record, "probabilities")
    assert probs["max_abs_diff"] == pytest.approx(times * tol, rel=0.05)
    if times > 1:
        assert out.returncode == 1 and record["verdict"] == "rejected"
        assert probs["status"] == "failed"
        assert f"(|dp| {probs['max_abs_diff']:.2e})" in out.stdout
    else:
        assert out.returncode == 0 and record["verdict"] == "accepted", out.stdout


# --- how a bundle declares the formats it reads ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"preprocess": {"formats": []}}, ["preprocess.formats", "empty"]),
        ({"preprocess": {"formats": ["gif"]}}, ["preprocess.formats[0]", "'dicom'"]),
    ],
)
def test_bad_formats_name_the_key(data: dict, words: list[str]) -> None:
    from packager.core.config import parse_config
    from packager.core.errors import UserError

    with pytest.raises(UserError) as err:
        parse_config(data, Path("/tmp"))
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_dicom_is_declared_by_the_data_or_the_window(tmp_path: Path) -> None:
    from packager.builder.session import resolve_formats
    from packager.core.config import parse_config
    from packager.core.data import holds_dicom, scan_folder
    from packager.core.errors import UserError
    from tests.dicom_files import write_dicom

    for label in ("normal", "pneumonia"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / label / "a.png")
    names = ["normal", "pneumonia"]
    assert not holds_dicom(scan_folder(tmp_path, "test", names))
    write_dicom(tmp_path / "pneumonia" / "IM0001", np.zeros((8, 8), np.uint8))  # no suffix
    assert holds_dicom(scan_folder(tmp_path, "test", names))

    pillow = ("png", "jpeg", "tiff", "bmp")
    assert resolve_formats(parse_config({}, tmp_path), False) == pillow
    assert resolve_formats(parse_config({}, tmp_path), True) == (*pillow, "dicom")
    window = parse_config({"data": {"dicom": {"window": [40.0, 400.0]}}}, tmp_path)
    assert resolve_formats(window, False) == (*pillow, "dicom")
    listed = parse_config({"preprocess": {"formats": ["dicom", "png"]}}, tmp_path)
    assert resolve_formats(listed, True) == ("png", "dicom")
    only_png = parse_config({"preprocess": {"formats": ["png"]}}, tmp_path)
    with pytest.raises(UserError, match='does not list "dicom"'):
        resolve_formats(only_png, True)
