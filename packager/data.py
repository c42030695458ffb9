"""Datasets: MedMNIST-layout .npz files and image folders (root/<class>/*.png|jpg)."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from packager.errors import UserError
from packager.preprocess import load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class Dataset:
    images: np.ndarray  # uint8, (N, H, W) or (N, H, W, 3)
    labels: np.ndarray  # int64, (N,)
    split: str
    sha256: str  # of the source file (npz) or of the folder's files

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, size: int, seed: int) -> Dataset:
        """A seeded random subset (calibration), never larger than the split."""
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(self), size=min(size, len(self)), replace=False))
        return Dataset(self.images[idx], self.labels[idx], self.split, self.sha256)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_dataset(path: str | Path | None, split: str, class_names: list[str]) -> Dataset:
    if path is None:
        raise UserError("no dataset given; pass --data PATH or set [data] path in packager.toml")
    p = Path(path)
    if p.is_dir():
        return _load_folder(p, split, class_names)
    if not p.exists():
        raise UserError(f"dataset {p} does not exist; check --data / [data] path")
    return _load_npz(p, split, len(class_names))


def _load_npz(path: Path, split: str, n_classes: int) -> Dataset:
    if not zipfile.is_zipfile(path):  # np.load would take a .npy or try to unpickle
        raise UserError(f"{path} is not an .npz (zip) file; pass a MedMNIST npz or an image folder")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile, zlib and numpy raise many types for damaged data
        raise UserError(
            f"{path} is not a readable .npz file ({exc}); pass a MedMNIST npz"
        ) from None
    with npz:
        keys = set(npz.files)
        img_key, lbl_key = f"{split}_images", f"{split}_labels"
        if img_key not in keys or lbl_key not in keys:
            splits = sorted({k.rsplit("_", 1)[0] for k in keys if k.endswith("_images")})
            raise UserError(
                f"{path} has no '{img_key}'/'{lbl_key}' arrays; "
                f"choose --split from {splits or 'none (not a MedMNIST npz)'}"
            )
        _check_memory(npz, (img_key, lbl_key), path)
        try:
            images, labels = npz[img_key], npz[lbl_key]
        except Exception as exc:  # zipfile, zlib and numpy raise many types for damaged data
            raise UserError(f"{path}: cannot read split '{split}' ({exc})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise UserError(
            f"{path}: {img_key} must be uint8 (N, H, W[, C]), got {images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise UserError(f"{path}: split '{split}' is empty; choose another --split")
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise UserError(f"{path}: {img_key} has {images.shape[-1]} channels; expected 1 or 3")
    if min(images.shape[1:3]) < 1:
        h, w = images.shape[1:3]
        raise UserError(f"{path}: {img_key} holds {h}x{w} images; expected a real image size")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: {lbl_key} must hold integer class indices, got {labels.dtype}")
    if labels.ndim not in (1, 2):
        raise UserError(f"{path}: {lbl_key} has shape {labels.shape}; expected (N,) or (N, 1)")
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise UserError(
            f"{path}: {lbl_key} has shape {labels.shape}; multi-label data is not supported"
        )
    labels = labels.reshape(-1).astype(np.int64)
    if len(labels) != len(images):
        raise UserError(f"{path}: {len(images)} images but {len(labels)} labels in split '{split}'")
    _check_labels(labels, n_classes, str(path))
    return Dataset(images, labels, split, file_sha256(path))


def _check_memory(npz: np.lib.npyio.NpzFile, keys: tuple[str, ...], path: Path) -> None:
    """Refuse a split larger than half the free memory before reading it (a zip bomb is small
    on disk; the sizes its directory declares bound what reading it can take)."""
    sizes = {i.filename: i.file_size for i in npz.zip.infolist()}
    need = sum(sizes.get(f"{k}.npy", sizes.get(k, 0)) for k in keys)
    free = psutil.virtual_memory().available
    if need > free // 2:
        raise UserError(
            f"{path}: the split needs {need / 2**30:.1f} GiB in memory and only "
            f"{free / 2**30:.1f} GiB are free; use a smaller split or a bigger machine"
        )


def _check_labels(labels: np.ndarray, n_classes: int, where: str) -> None:
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise UserError(
            f"{where}: label {int(bad[0])} is outside the {n_classes} classes of [labels] names; "
            "fix the labels or list every class in [labels] names"
        )


def _load_folder(root: Path, split: str, class_names: list[str]) -> Dataset:
    # root/<split>/<class>/ when a split folder exists, else root/<class>/.
    base = root / split if (root / split).is_dir() else root
    folders = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise UserError(f"{base} has no class folders; expected {base}/<class>/*.png")
    for d in folders:
        if d.name not in class_names:
            raise UserError(
                f"{d}: folder '{d.name}' is not a class in [labels] names {class_names}; "
                "rename it or add the class"
            )
    images, labels = [], []
    h = hashlib.sha256()
    for d in folders:
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                continue
            try:
                img = load_image(f)
            except Exception as exc:  # Pillow raises many types for corrupt files
                raise UserError(f"{f}: cannot read image ({exc}); remove or replace it") from None
            h.update(f"{d.name}/{f.name}".encode())
            h.update(f.read_bytes())
            images.append(img)
            labels.append(class_names.index(d.name))
    if not images:
        raise UserError(f"{base}: no images (*.png, *.jpg) in the class folders")
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise UserError(
            f"{base}: images have different sizes {sorted(shapes)[:3]}; "
            "resize them to one size first"
        )
    return Dataset(np.stack(images), np.asarray(labels, np.int64), split, h.hexdigest())
