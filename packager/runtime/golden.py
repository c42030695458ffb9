"""The golden set each bundle carries for its arrival self-test (the replay itself ships in the
bundle as selftest.py): deterministic inputs, the target runtime's outputs on them, and a
tolerance measured on the build host rather than guessed.

Inputs: seeded synthetic images in the model's input space, blends of two of them placed just
either side of the decision threshold (where a numerics change flips a decision first), and,
only where [data] shareable = true, the validation images nearest the threshold; then raw image
files, encoded in each format the bundle reads (raw_cases), which the replay decodes with the
shipped preprocess.py, so its code and preprocess.json are under test too."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from packager.runtime.runner import Runner
from packager.shipped.predict import infer_all, probabilities
from packager.shipped.preprocess import Preprocess
from packager.shipped.selftest import (
    GOLDEN,
    GOLDEN_META,
    SCHEMA_VERSION,
    decode_raw,
    raw_files,
    shipped_preprocess,
)

# Smallest tolerance per precision: run-to-run spread on one host is often exactly zero, but
# another CPU's kernels (AVX2 vs AVX-512, VNNI or not) legitimately move the last digits.
FLOORS = {"fp32": 1e-4, "fp16": 1e-3, "int8": 5e-3, "bf16": 2e-2}
PROXY_FLOOR = 1e-2  # golden outputs from a proxy: the target's own runtime is compared with them
GOLDEN_BATCH = 8
NEAR_MARGINS = (3.0, 10.0)  # near-threshold cases sit this many tolerance floors from it
SEARCH_ROUNDS, SEARCH_POINTS = 5, 9
TENSOR_KINDS = ("synthetic", "near-threshold", "validation")
RAW_SEED = 1
RAW_MAX_SIDE = 256  # raw files of a larger model are this big (its resize scales them up)
RAW_BUDGET = 2**22  # model-input values per form across its candidates (16 MB as float32)
# (mean level, contrast) of each candidate of a raw form, on the 0..1 display range
RAW_VARIANTS = ((0.5, 1.0), (0.3, 0.6), (0.7, 0.6), (0.5, 0.3), (0.15, 0.3), (0.85, 0.3))
_SUFFIX = {"png": "png", "jpeg": "jpg", "tiff": "tif", "bmp": "bmp", "dicom": "dcm"}


def floor_for(precision: str, proxy: bool) -> float:
    base = next((v for k, v in FLOORS.items() if precision.startswith(k)), FLOORS["int8"])
    return max(base, PROXY_FLOOR) if proxy else base


def synthetic_images(hw: tuple[int, int], channels: int, n: int, seed: int = 0) -> np.ndarray:
    """Seeded uint8 (height, width) images: flat fields, gradients, smooth blobs and white noise
    in turn."""
    rng = np.random.default_rng(seed)
    h, w = hw
    shape = (h, w, 3) if channels == 3 else (h, w)
    out = np.empty((n, *shape), np.uint8)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            img = np.full(shape, rng.integers(0, 256), np.float64)
        elif kind == 1:
            angle = rng.uniform(0, np.pi)
            field = (
                np.cos(angle) * np.linspace(0.0, 1.0, w)[None, :]
                + np.sin(angle) * np.linspace(0.0, 1.0, h)[:, None]
            )
            img = 255 * (field - field.min()) / max(np.ptp(field), 1e-9)
            img = np.repeat(img[..., None], 3, axis=2) if channels == 3 else img
        elif kind == 2:
            coarse = rng.integers(0, 256, (rng.integers(3, 9),) * 2 + shape[2:], dtype=np.uint8)
            img = np.asarray(
                Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float64
            )
        else:
            img = rng.integers(0, 256, shape).astype(np.float64)
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def _blend(a: np.ndarray, b: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    w = alphas.reshape(-1, *([1] * a.ndim)).astype(np.float32)
    return ((1 - w) * a.astype(np.float32) + w * b.astype(np.float32)).astype(a.dtype)


def near_threshold(
    score: Any, x: np.ndarray, p: np.ndarray, threshold: float, goals: list[float]
) -> np.ndarray:
    """For each goal probability, a blend of a below- and an above-threshold input whose
    positive-class probability is close to it (a grid search on the blend weight, refined)."""
    below, above = np.argsort(p)[: len(goals)], np.argsort(p)[::-1][: len(goals)]
    below, above = below[p[below] < threshold], above[p[above] >= threshold]
    if not len(below) or not len(above):
        return x[:0]
    found = []
    for i, goal in enumerate(goals):
        a, b = x[below[i % len(below)]], x[above[i % len(above)]]
        lo, hi, best, best_gap = 0.0, 1.0, a, np.inf
        for _ in range(SEARCH_ROUNDS):
            alphas = np.linspace(lo, hi, SEARCH_POINTS)
            probs = score(_blend(a, b, alphas))
            gaps = np.abs(probs - goal)
            j = int(np.argmin(gaps))
            if gaps[j] < best_gap:
                best, best_gap = _blend(a, b, alphas[j : j + 1])[0], gaps[j]
            crossing = np.flatnonzero(np.diff(np.sign(probs - goal)))
            k = int(crossing[0]) if len(crossing) else max(0, min(j, SEARCH_POINTS - 2))
            lo, hi = alphas[k], alphas[k + 1]
        found.append(best)
    return np.stack(found)


def record(
    runner: Runner, x: np.ndarray, samples: np.ndarray, raw: np.ndarray, spec: dict[str, Any]
) -> dict:
    """In the worker, on the target's runtime: the golden inputs (`raw`: the raw cases' model
    inputs, decoded by the bundle's preprocess.py), their probabilities at GOLDEN_BATCH (twice)
    and at batch 1, and the tolerance those runs imply."""
    fixed, kind, pos = spec["fixed_batch"], spec["output"], spec["positive_index"]

    def probs_of(inputs: np.ndarray, batch: int = GOLDEN_BATCH) -> np.ndarray:
        return probabilities(infer_all(runner, inputs, batch, fixed), kind)

    threshold, floor = spec["threshold"], spec["floor"]
    # one decision, or one per finding of a multi-label model: near-threshold cases for each
    points = list(zip(pos, threshold, strict=True)) if isinstance(pos, list) else [(pos, threshold)]
    # Each case costs SEARCH_ROUNDS x SEARCH_POINTS inferences: the cases are shared out among
    # the findings, at least one each side of every finding's threshold.
    n = spec["near_threshold"]
    each = n if len(points) == 1 or n == 0 else max(2, n // len(points))
    p = probs_of(x)
    found = [x[:0]]
    for col, t in points:
        goals = [
            min(max(t + sign * m * floor, 1e-6), 1 - 1e-6) for m in NEAR_MARGINS for sign in (-1, 1)
        ][:each]
        found.append(near_threshold(lambda z, c=col: probs_of(z)[:, c], x, p[:, col], t, goals))
    near = np.concatenate(found)
    tensors = np.concatenate([x, near, samples.astype(x.dtype)])
    kinds = ["synthetic"] * len(x) + ["near-threshold"] * len(near) + ["validation"] * len(samples)
    chosen = nearest_per_group(
        margin(probs_of(raw), pos, threshold), np.asarray(spec["raw_group"]), floor
    )
    inputs = np.concatenate([tensors, raw[chosen].astype(x.dtype)])
    golden, again, single = probs_of(inputs), probs_of(inputs), probs_of(inputs, 1)
    repeat = float(np.abs(golden - again).max())
    batch_effect = float(np.abs(golden - single).max())
    return {
        "x": tensors,
        "probs": golden[: len(tensors)],
        "kinds": np.array(kinds),
        "raw_probs": golden[len(tensors) :],
        "raw_chosen": chosen,
        "repeat_max_abs_diff": repeat,
        "batch1_max_abs_diff": batch_effect,
        "tolerance": max(floor, 2 * max(repeat, batch_effect)),
    }


def nearest_per_group(gap: np.ndarray, group: np.ndarray, floor: float) -> np.ndarray:
    """Per group, the index nearest a threshold (`gap`: see `margin`) yet farther from it than
    the near-threshold cases' largest margin (so its decision is judged too), else the nearest."""
    rank = np.where(gap > NEAR_MARGINS[-1] * floor, gap, 1.0 + gap)
    return np.array(
        [np.flatnonzero(group == g)[np.argmin(rank[group == g])] for g in np.unique(group)],
        np.int64,
    )


def margin(probs: np.ndarray, positive: Any, threshold: Any) -> np.ndarray:
    """Each row's distance to deciding otherwise: |p(positive) - threshold|, or with lists (a
    multi-label model's findings) the smallest over the findings."""
    gap = np.abs(np.asarray(probs)[:, positive] - np.asarray(threshold))
    return gap.reshape(len(gap), -1).min(axis=1)


def samples_near_threshold(
    x: np.ndarray, probs: np.ndarray, positive: Any, threshold: Any, n: int
) -> np.ndarray:
    """The n validation inputs nearest a threshold (`margin`)."""
    order = np.argsort(margin(probs, positive, threshold), kind="stable")
    return x[np.sort(order[:n])]


def write_golden(
    bdir: Path, result: dict[str, Any], raw: dict[str, np.ndarray], meta: dict[str, Any]
) -> dict[str, Any]:
    """selftest.npz (inputs, golden probabilities, case kinds, and the raw image files with
    theirs) and selftest.json (tolerance and how it was measured); returns the summary that goes
    into report.json."""
    np.savez(
        bdir / GOLDEN,
        x=result["x"],
        probs=result["probs"],
        kinds=result["kinds"],
        **raw,
        raw_probs=result["raw_probs"],
    )
    kinds = [str(k) for k in result["kinds"]]
    cases = {k: kinds.count(k) for k in TENSOR_KINDS}
    for k in raw["raw_kinds"]:
        cases[str(k)] = cases.get(str(k), 0) + 1
    summary = {
        "schema_version": SCHEMA_VERSION,
        **meta,
        "batch_size": GOLDEN_BATCH,
        "tolerance": result["tolerance"],
        "measured": {
            "repeat_max_abs_diff": result["repeat_max_abs_diff"],
            "batch1_max_abs_diff": result["batch1_max_abs_diff"],
        },
        "cases": cases,
    }
    from packager.core import (
        documents,  # here: the worker imports this module, and needs no pydantic
    )

    return documents.write(bdir / GOLDEN_META, documents.SelftestSummary, summary)


def synthetic_inputs(pre: Preprocess, n: int) -> np.ndarray:
    return pre(synthetic_images(pre.hw, pre.channels, n))


def _smooth(rng: np.random.Generator, h: int, w: int, channels: int = 1) -> np.ndarray:
    """A smooth random field on 0..1 (h, w[, channels]): coarse noise, bicubic upsampled."""
    planes = []
    for _ in range(channels):
        coarse = rng.random((int(rng.integers(3, 7)),) * 2).astype(np.float32)
        up = Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC)
        planes.append(np.asarray(up, np.float64))
    field = np.stack(planes, axis=-1) if channels > 1 else planes[0]
    return (field - field.min()) / max(float(np.ptp(field)), 1e-9)


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    angle = rng.uniform(0, np.pi)
    field = (
        np.cos(angle) * np.linspace(0, 1, w)[None, :]
        + np.sin(angle) * np.linspace(0, 1, h)[:, None]
    )
    return (field - field.min()) / max(float(np.ptp(field)), 1e-9)


def _encoded(img: np.ndarray, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **options)
    return buf.getvalue()


def _dicom(
    pixels: np.ndarray,
    kind: str,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 8,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
) -> bytes:
    """A single-frame DX image, uncompressed, with no patient attributes; UIDs derived from the
    kind, so a rebuild writes the same bytes."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    dx = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dx
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["packager selftest", kind])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = dx, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = rescale[0], rescale[1], "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def raw_cases(pre: Preprocess, seed: int = RAW_SEED) -> dict[str, np.ndarray]:
    """Candidate raw image files for each form of each format `pre.formats` declares, a little
    larger than the model's input (so the resize runs): per form, one seeded image at each of
    RAW_VARIANTS' brightness and contrast (`raw_group` numbers the form; the recording keeps the
    candidate nearest the threshold, where a change in the preprocessing shows most). The
    forms alternate smooth blobs and ramps, so the two 8-bit and 16-bit PNGs differ. Arrays
    as selftest.npz stores them (shipped selftest.RAW)."""
    rng = np.random.default_rng(seed)
    side_h, side_w = (min(s, RAW_MAX_SIDE) for s in pre.hw)
    h, w = side_h + side_h // 4 + 1, side_w + side_w // 8 + 1
    top16 = 2**pre.uint16_bits - 1
    forms = [form for form in _raw_forms(top16) if form[1] in pre.formats]
    # fewer candidates for a large model input: they are all decoded and run once
    variants = max(1, min(len(RAW_VARIANTS), RAW_BUDGET // (pre.hw[0] * pre.hw[1] * pre.channels)))
    names, kinds, groups, files = [], [], [], []
    for group, (kind, fmt, encode, channels) in enumerate(forms):
        gradient = channels == 1 and group % 2 == 1  # smooth blobs and ramps in turn
        field = _gradient(rng, h, w) if gradient else _smooth(rng, h, w, channels)
        for v, (level, contrast) in enumerate(RAW_VARIANTS[:variants]):
            varied = np.clip(level + contrast * (field - 0.5), 0.0, 1.0)
            files.append(encode(varied, f"{kind} {v}"))
            names.append(f"{group:02d}-{v}.{_SUFFIX[fmt]}")
            kinds.append(kind)
            groups.append(group)
    return {
        "raw_bytes": np.frombuffer(b"".join(files), np.uint8),
        "raw_ends": np.cumsum([len(f) for f in files]).astype(np.int64),
        "raw_names": np.array(names),
        "raw_kinds": np.array(kinds),
        "raw_group": np.array(groups, np.int64),
    }


def _raw_forms(top16: int) -> list[tuple[str, str, Any, int]]:
    """(case kind, format, encoder of a 0..1 field and a UID seed, channels) for every form."""

    def u8(f: np.ndarray) -> np.ndarray:
        return np.rint(f * 255).astype(np.uint8)

    def u16(f: np.ndarray, top: int) -> np.ndarray:
        return np.rint(f * top).astype(np.uint16)

    return [
        ("png 8-bit", "png", lambda f, _: _encoded(u8(f), "PNG", compress_level=1), 1),
        ("png 8-bit", "png", lambda f, _: _encoded(u8(f), "PNG", compress_level=1), 1),
        ("png 16-bit", "png", lambda f, _: _encoded(u16(f, top16), "PNG", compress_level=1), 1),
        ("png 16-bit", "png", lambda f, _: _encoded(u16(f, top16), "PNG", compress_level=1), 1),
        ("png rgb", "png", lambda f, _: _encoded(u8(f), "PNG", compress_level=1), 3),
        ("jpeg 8-bit", "jpeg", lambda f, _: _encoded(u8(f), "JPEG", quality=90), 1),
        (
            "tiff 16-bit",
            "tiff",
            lambda f, _: _encoded(u16(f, top16), "TIFF", compression="tiff_adobe_deflate"),
            1,
        ),
        ("bmp 8-bit", "bmp", lambda f, _: _encoded(u8(f), "BMP"), 1),
        ("dicom MONOCHROME2 8-bit", "dicom", lambda f, uid: _dicom(u8(f), uid), 1),
        (
            "dicom MONOCHROME1 16-bit window",
            "dicom",
            lambda f, uid: _dicom(
                u16(f, 65535), uid, photometric="MONOCHROME1", bits=16, window=(32768.0, 40000.0)
            ),
            1,
        ),
        (
            # modality values -1024..3071 (slope 1, intercept -1024), windowed on part of them
            "dicom 12-bit rescale window",
            "dicom",
            lambda f, uid: _dicom(
                u16(f, 4095), uid, bits=12, rescale=(1.0, -1024.0), window=(1024.0, 2400.0)
            ),
            1,
        ),
    ]


def pick_raw(raw: dict[str, np.ndarray], chosen: np.ndarray) -> dict[str, np.ndarray]:
    """The chosen candidates of raw_cases, repacked as selftest.npz stores them."""
    files = raw_files(raw["raw_bytes"], raw["raw_ends"])
    kept = [files[i] for i in chosen]
    return {
        "raw_bytes": np.frombuffer(b"".join(kept), np.uint8),
        "raw_ends": np.cumsum([len(f) for f in kept]).astype(np.int64),
        "raw_names": raw["raw_names"][chosen],
        "raw_kinds": raw["raw_kinds"][chosen],
    }


def raw_inputs(bundle: Path, raw: dict[str, np.ndarray]) -> np.ndarray:
    """The raw cases' model inputs, decoded by the staged bundle's own preprocess.py and
    preprocess.json (the shipped replay's code path)."""
    pre = shipped_preprocess(bundle)
    tensors, errors = decode_raw(
        pre, raw["raw_names"], raw_files(raw["raw_bytes"], raw["raw_ends"])
    )
    bad = next((e for e in errors if e), None)
    if bad is not None:  # generated here for this preprocessing: a packager bug
        raise RuntimeError(f"a self-test image does not decode through preprocess.py: {bad}")
    return np.concatenate([t for t in tensors if t is not None])
