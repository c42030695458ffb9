"""The one preprocessing implementation: validation, calibration and every bundle's predict.py.

Standalone on purpose (numpy and Pillow; pydicom only for DICOM files, imported when one is
read): bundles ship this file verbatim next to preprocess.json, so a hospital runs exactly the
code the bundle was validated with, DICOM decoding included.

Input range, stated per dtype (every image is first put on one 0..255 "display" scale, so the
configured `scale`/`mean`/`std` mean the same thing for every bit depth):
- uint8: 8-bit PNG/JPEG/TIFF or MedMNIST arrays, 0..255 as is;
- uint16: 16-bit PNG/TIFF, 0..2**uint16_bits-1 mapped linearly onto 0..255 (a value above that
  range is an error, never clipped silently; set uint16_bits = 12 for 12-bit data in 16-bit files);
- float32: DICOM after its modality LUT, VOI LUT or window and MONOCHROME1 inversion, already on
  0..255 (the window's output range mapped linearly; see load_dicom).

File formats: `formats` lists the ones a bundle reads (preprocess.json; [preprocess] formats).
Its self-test replays an encoded file of each through this module, and `load` refuses any other,
so a hospital never feeds the bundle a format its self-test did not cover.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_DTYPES = {"float32": np.float32, "float16": np.float16}
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
DICOM_DECODERS = "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
_MONO = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")  # decoded to RGB by pydicom
# Every file format load_image reads: Pillow's (lower-cased Image.format) and DICOM.
PILLOW_FORMATS = ("png", "jpeg", "tiff", "bmp")
FORMATS = (*PILLOW_FORMATS, "dicom")
_PILLOW_ALIASES = {"MPO": "jpeg"}  # a camera JPEG with a second picture is still a JPEG

# Pillow warns between its limit and twice it; check_pixels refuses all of those images itself
# (a warning would be a second line after the one-line refusal).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    """A file this preprocessing refuses. The message names the problem and the fix, and never
    carries a DICOM element's value (patient names, IDs and dates stay out of every message)."""


@dataclass(frozen=True)
class Preprocess:
    size: int | tuple[int, int]  # the model's image side, or (height, width)
    channels: int
    layout: str  # "NCHW" | "NHWC"
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str  # the model input's dtype: "float32" | "float16"
    resize: str = "bilinear"
    uint16_bits: int = 16  # the bit depth of uint16 images (see the module docstring)
    dicom_window: tuple[float, float] | None = None  # [center, width]; None: the file's own
    formats: tuple[str, ...] = FORMATS  # the file formats `load` reads (module docstring)

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the model's images."""
        return (self.size, self.size) if isinstance(self.size, int) else self.size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Images (N, H, W) or (N, H, W, C) of one dtype (see the module docstring) -> the
        model's input tensor."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(f"images must be (N, H, W[, 1|3|4]), got {images.shape}")
        images = self.display(images[..., :3])
        if images.shape[-1] == 3 and self.channels == 1:
            images = images @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        if images.shape[1:3] != self.hw:
            images = np.stack([self._resize(img) for img in images])
        if images.shape[-1] == 1 and self.channels == 3:  # after resizing: 3x less work
            images = np.repeat(images, 3, axis=-1)
        x = images * np.float32(self.scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x.astype(_DTYPES[self.dtype]))

    def display(self, images: np.ndarray) -> np.ndarray:
        """Any supported dtype -> float32 on the 0..255 display scale (the module docstring)."""
        if images.dtype == np.uint8:
            return images.astype(np.float32)
        if images.dtype == np.uint16:
            top = 2**self.uint16_bits - 1
            peak = int(images.max(initial=0))
            if peak > top:
                raise ImageError(
                    f"a 16-bit image holds {peak}, above the {self.uint16_bits}-bit range "
                    f"0..{top}; set [preprocess] uint16_bits to the data's real bit depth"
                )
            return images.astype(np.float32) * np.float32(255.0 / top)
        if images.dtype in (np.float32, np.float64):
            return images.astype(np.float32)
        raise ImageError(f"images of dtype {images.dtype} have no defined range")

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One image of any size and supported dtype -> float32 (height, width, channels) on the
        display scale: what __call__ does before scaling, so a folder of mixed sizes can be
        resized image by image as it loads and give the same tensor."""
        img = np.asarray(image)
        if img.ndim == 2:
            img = img[..., None]
        img = self.display(img[..., :3])
        if img.shape[-1] == 3 and self.channels == 1:
            img = img @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        if img.shape[:2] != self.hw:
            img = self._resize(img)
        if img.shape[-1] == 1 and self.channels == 3:
            img = np.repeat(img, 3, axis=-1)
        return img.astype(np.float32)

    def load(self, path: str | Path, data: bytes | None = None) -> np.ndarray:
        """One image file as this bundle reads it (DICOM with its window override); a format
        outside `formats` is refused."""
        return load_image(path, self.dicom_window, data, self.formats)

    def _resize(self, img: np.ndarray) -> np.ndarray:
        # Float ("F") mode per channel keeps resize exact regardless of the source bit depth.
        out = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(img[..., c]), mode="F").resize(
                    self.hw[::-1],
                    _RESAMPLE[self.resize],  # Pillow takes (width, height)
                )
            )
            for c in range(img.shape[-1])
        ]
        return np.stack(out, axis=-1)

    def input_shape(self, batch: int) -> tuple[int, ...]:
        if self.layout == "NCHW":
            return (batch, self.channels, *self.hw)
        return (batch, *self.hw, self.channels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> Preprocess:
        data = json.loads(Path(path).read_text())
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        if isinstance(data["size"], list):
            data["size"] = tuple(data["size"])
        if data.get("dicom_window") is not None:
            data["dicom_window"] = tuple(data["dicom_window"])
        if "formats" in data:
            data["formats"] = tuple(data["formats"])
        return cls(**data)


def is_dicom(name: str | Path, head: bytes) -> bool:
    """A .dcm suffix, or the DICM magic after the 128-byte preamble (many files have no suffix)."""
    return Path(name).suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM"


def load_image(
    path: str | Path,
    window: tuple[float, float] | None = None,
    data: bytes | None = None,
    formats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """An image file in its own range (module docstring): uint8 or uint16 (H, W) for grayscale,
    uint8 (H, W, 3) for colour, float32 (H, W) for DICOM. `data`: the file's bytes, if read;
    `formats`: the file formats accepted (see FORMATS); None: any."""
    if data is None:
        data = Path(path).read_bytes()
    if is_dicom(path, data[:132]):
        _declared("dicom", formats)
        return load_dicom(data, window)
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only: no pixel decoded yet
    except Image.DecompressionBombError:
        raise ImageError(_too_many_pixels("the image declares too many pixels")) from None
    with img:
        _declared(_PILLOW_ALIASES.get(str(img.format), str(img.format).lower()), formats)
        check_pixels("the image", *img.size)
        if img.mode.startswith("I;16"):
            return np.asarray(img).astype(np.uint16)
        if img.mode == "I":  # 32-bit integer: only a 16-bit range is defined
            arr = np.asarray(img)
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ImageError("32-bit integer image outside 0..65535; export 8- or 16-bit")
            return arr.astype(np.uint16)
        if img.mode == "F":
            raise ImageError("floating-point image has no defined range; export 8- or 16-bit")
        gray = img.mode in ("1", "L", "LA")
        return np.asarray(img.convert("L" if gray else "RGB"))


def _declared(fmt: str, formats: tuple[str, ...] | None) -> None:
    if formats is not None and fmt not in formats:
        raise ImageError(
            f"this bundle does not read {fmt.upper()} files: it reads {', '.join(formats)} "
            f"(what its self-test covers); convert the image, or rebuild with [preprocess] "
            f'formats listing "{fmt}"'
        )


def check_pixels(kind: str, width: int, height: int) -> None:
    """One pixel limit for every format (Pillow's, ~89 Mpx), checked against the size the
    header declares before any pixel is decoded: a 13000x13000 16-bit PNG would take ~2 GB."""
    if width * height > (Image.MAX_IMAGE_PIXELS or 2**31):
        raise ImageError(_too_many_pixels(f"{kind} declares {height}x{width} pixels"))


def _too_many_pixels(what: str) -> str:
    return (
        f"{what}, more than the {Image.MAX_IMAGE_PIXELS or 2**31:,} pixel limit (a decompression "
        "bomb or a mis-written header); downsample it before export"
    )


def load_dicom(data: bytes, window: tuple[float, float] | None = None) -> np.ndarray:
    """One single-frame DICOM image. Monochrome: modality LUT, then the VOI LUT or window (the
    file's, or `window` = (center, width) instead), then MONOCHROME1 inversion, as float32 on
    0..255 (the VOI output range mapped linearly). Colour: uint8 RGB (H, W, 3)."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
    except ImportError:
        raise ImageError("reading DICOM needs pydicom 3; pip install pydicom") from None
    _quiet_pydicom()
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise ImageError(
            "not a DICOM file (no DICM preamble); remove it or export DICOM Part 10"
        ) from None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ImageError(
            f"damaged DICOM file ({type(exc).__name__}: cannot parse its elements); re-export it"
        ) from None
    try:
        return _decode_dicom(ds, window, apply_modality_lut, apply_voi_lut, get_decoder)
    except ImageError:
        raise
    except Exception as exc:  # elements are parsed lazily: damage can surface at any access
        raise ImageError(
            f"damaged DICOM file ({type(exc).__name__} reading its elements); re-export it"
        ) from None


def _decode_dicom(
    ds: Any, window: tuple[float, float] | None, modality: Any, voi: Any, get_decoder: Any
) -> np.ndarray:
    _check_dicom(ds)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise ImageError("DICOM file without a transfer syntax; re-export it as Part 10")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageError(
            f"no pixel decoder exists for transfer syntax {syntax}; re-export uncompressed"
        ) from None
    if not decoder.is_available:
        raise ImageError(
            f"pixel data compressed as {syntax.name} and no decoder is installed; "
            f"pip install {DICOM_DECODERS} (or packager[dicom])"
        )
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise many types; their messages carry sizes only
        one = " ".join(str(exc).split())[:200]
        raise ImageError(f"cannot decode the pixel data ({type(exc).__name__}: {one})") from None
    photometric = str(ds.PhotometricInterpretation)
    if photometric in _COLOUR:
        if arr.dtype != np.uint8 or arr.ndim != 3:
            raise ImageError(f"{photometric} DICOM with {ds.BitsStored} bits; only 8-bit colour")
        return arr
    return _dicom_display(ds, arr, window, modality, voi)


_QUIET: list[bool] = []


def _quiet_pydicom() -> None:
    """pydicom warns about odd element values and may quote them: patient data stays out. A
    module filter, installed once (catch_warnings is not thread-safe and images load in threads)."""
    if not _QUIET:
        warnings.filterwarnings("ignore", module=r"(pydicom|pylibjpeg|openjpeg|libjpeg)(\.|$)")
        _QUIET.append(True)


def _check_dicom(ds: Any) -> None:
    sop = ds.get("SOPClassUID")
    if sop is not None and "Image Storage" not in getattr(sop, "name", ""):
        raise ImageError(f"SOP class {sop.name or sop} is not an image; remove it from the data")
    if "PixelData" not in ds:
        raise ImageError("DICOM file has no pixel data; remove it from the data")
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames or 1)
    except (TypeError, ValueError):
        raise ImageError("DICOM Number of Frames is not a number; re-export it") from None
    if frames > 1:
        raise ImageError(
            f"multi-frame DICOM ({frames} frames); export one frame per file (a single view)"
        )
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in (*_MONO, *_COLOUR):
        raise ImageError(
            f"photometric interpretation {photometric or 'missing'} is not supported; "
            f"use one of {', '.join((*_MONO, *_COLOUR))}"
        )
    rows, cols, bits = ds.get("Rows"), ds.get("Columns"), ds.get("BitsStored")
    if not isinstance(rows, int) or not isinstance(cols, int) or not rows or not cols:
        raise ImageError("DICOM Rows/Columns missing or zero; re-export it")
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ImageError(f"DICOM Bits Stored {bits} is not 1..16; re-export it")
    check_pixels("DICOM", cols, rows)


def _dicom_display(
    ds: Any, arr: np.ndarray, window: tuple[float, float] | None, modality: Any, voi: Any
) -> np.ndarray:
    if arr.ndim != 2:
        raise ImageError(
            f"monochrome DICOM pixel array has shape {arr.shape}; expected (rows, cols)"
        )
    if window is not None:  # the configured window replaces the file's VOI LUT and window
        for key in ("VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction"):
            if key in ds:
                del ds[key]
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = (
        np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1])
        if signed
        else np.array([0, 2**bits - 1])
    )
    try:
        values = voi(modality(arr, ds), ds)
        # The output range, from pydicom's own functions: the stored range through the same
        # LUTs, with values far outside any window to reach the window's y_min and y_max.
        ends = voi(modality(stored, ds), ds)
        if "WindowCenter" in ds and "VOILUTSequence" not in ds:
            with np.errstate(over="ignore"):
                ends = voi(np.array([-1e300, 1e300]), ds)
        elif ds.get("VOILUTSequence"):
            lut = ds.VOILUTSequence[0]
            entries = int(lut.LUTDescriptor[0]) or 2**16
            first = int(lut.LUTDescriptor[1])
            ends = voi(np.arange(first, first + entries), ds)
    except (
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        NotImplementedError,
    ) as exc:
        raise ImageError(
            f"cannot apply the DICOM LUTs ({type(exc).__name__}); check the window"
        ) from None
    lo, hi = float(np.min(ends)), float(np.max(ends))
    if not hi > lo or not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageError("the DICOM LUT or window gives an empty output range; check the window")
    display = (np.asarray(values, np.float64) - lo) * (255.0 / (hi - lo))
    if ds.PhotometricInterpretation == "MONOCHROME1":  # white is low: invert on the display range
        display = 255.0 - display
    return display.astype(np.float32)
