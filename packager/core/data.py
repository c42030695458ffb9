"""Datasets: MedMNIST-layout .npz files and image folders (PNG, JPEG, TIFF, DICOM), labelled by
class subfolders (root/<class>/*) or by a CSV (path,label[,split][,metadata columns...]).

A folder is first scanned into a FileList (paths, labels, metadata: no pixel read), which can be
streamed (packager.runtime.stream) or read whole into a Dataset; both hash the same way.

Metadata by allowlist: of a CSV's other columns only those named as group columns ([data]
group_by, `validate --group-by`) are read, and a named column that looks like a patient
identifier is refused (packager.core.identifiers); every other column is dropped as the CSV is read.
Every file, in every layout, must lie inside the data folder: a symlink out of it is refused."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil

from packager.core.errors import UserError
from packager.core.identifiers import refuse_identifier
from packager.core.schema import shown
from packager.shipped.integrity import file_sha256
from packager.shipped.preprocess import DICOM_SUFFIXES, ImageError, Preprocess, is_dicom, load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_SUFFIXES}
LABELS_CSV = "labels.csv"
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Dataset:
    images: np.ndarray  # (N, H, W[, C]): uint8, or float32 on the 0..255 display scale
    labels: np.ndarray  # int64: (N,) class indices, or (N, K) 0/1 findings for multilabel
    split: str
    sha256: str  # of the source file (npz) or of the folder's files, labels and CSV
    # Per-image CSV columns (site, manufacturer, sex, age_band, ...) for subgroup analysis.
    metadata: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, size: int, seed: int) -> Dataset:
        """A seeded random subset (calibration), never larger than the split."""
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(self), size=min(size, len(self)), replace=False))
        meta = {k: v[idx] for k, v in self.metadata.items()}
        return Dataset(self.images[idx], self.labels[idx], self.split, self.sha256, meta)


@dataclass
class FileList:
    """A folder dataset before any pixel is read."""

    base: Path
    names: list[str]  # each file's path relative to `base`, as the hash records it
    labels: np.ndarray  # int64: (N,) class indices, or (N, K) 0/1 findings for multilabel
    split: str
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    csv_sha256: str = ""  # of the labels CSV, when the labels come from one
    # Each image's row in that CSV: 0 is the first row after the header, blank lines not counted
    # (pandas.read_csv's index). None for class folders: there the position in `names` is it.
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> Path:
        # Built on demand: a Path object per image would be most of a 20,000-image list's memory.
        return self.base / self.names[i]

    def hasher(self) -> FolderHash:
        return FolderHash(self)


class FolderHash:
    """sha256 over the labels CSV and, per image in order, its name, label and content hash:
    computable while streaming, with each file's own hash taken in the thread that reads it."""

    def __init__(self, files: FileList) -> None:
        self.files = files
        self.h = hashlib.sha256(f"packager-folder-v2\n{files.csv_sha256}\n".encode())

    def add(self, i: int, digest: str) -> None:
        label = ",".join(str(int(v)) for v in np.atleast_1d(self.files.labels[i]))
        self.h.update(f"{self.files.names[i]}\t{label}\t{digest}\n".encode())

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def imap_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int) -> Iterator[R]:
    """fn over items in a thread pool, results in order, at most `ahead` in flight (so memory
    stays bounded however many items there are). Pillow, numpy and zlib release the GIL."""
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="packager-read")
    it = iter(items)
    pending: deque = deque()
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def load_dataset(
    path: str | Path | None,
    split: str,
    class_names: list[str],
    pre: Preprocess | None = None,
    labels_csv: str | Path | None = None,
    columns: Sequence[str] = (),
    task: str | None = None,
) -> Dataset:
    """The whole split in memory. With `pre` (the model's preprocessing), images that are not
    all 8-bit of one size (16-bit, DICOM, mixed sizes) are resized to the model's size one by
    one as they load, on the display scale, so memory is bounded by the model's input size.
    `columns`: the CSV metadata columns to keep (the module docstring). `task`: [labels] task;
    None is one class per image, "infer" takes one 0/1 column per name as multi-label."""
    source = open_dataset(path, split, class_names, labels_csv, columns, task=task)
    return source if isinstance(source, Dataset) else read_files(source, pre)


def open_dataset(
    path: str | Path | None,
    split: str,
    class_names: list[str],
    labels_csv: str | Path | None = None,
    columns: Sequence[str] = (),
    missing_ok: bool = False,
    task: str | None = None,
) -> Dataset | FileList:
    """An npz as a Dataset (it is one array anyway), a folder as a FileList (nothing read).
    `columns` must be in the CSV's header unless `missing_ok` (then only those present are)."""
    if path is None:
        raise UserError("no dataset given; pass --data PATH or set [data] path in packager.toml")
    p = Path(path)
    if p.is_dir():
        return scan_folder(p, split, class_names, labels_csv, columns, missing_ok, task)
    if labels_csv is not None:
        raise UserError(f"--labels / [data] labels needs an image folder, but {p} is not one")
    if not p.exists():
        raise UserError(f"dataset {p} does not exist; check --data / [data] path")
    return _load_npz(p, split, class_names, task)


def _load_npz(path: Path, split: str, class_names: list[str], task: str | None) -> Dataset:
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
    k = len(class_names)
    multi = labels.ndim == 2 and labels.shape[1] == k and task in ("infer", "multilabel")
    if task == "multilabel" and not multi:
        raise UserError(
            f"{path}: {lbl_key} has shape {labels.shape}; a multilabel model needs (N, {k}): "
            "one 0/1 column per [labels] names"
        )
    if not multi and (labels.ndim not in (1, 2) or labels.ndim == 2 and labels.shape[1] != 1):
        raise UserError(
            f"{path}: {lbl_key} has shape {labels.shape}; expected (N,) or (N, 1) class indices, "
            f'or (N, {k}) 0/1 findings for a multi-label model (set [labels] task = "multilabel")'
        )
    labels = labels.astype(np.int64) if multi else labels.reshape(-1).astype(np.int64)
    if len(labels) != len(images):
        raise UserError(f"{path}: {len(images)} images but {len(labels)} labels in split '{split}'")
    if multi:
        _check_findings(labels, class_names, f"{path}: {lbl_key}")
    else:
        _check_labels(labels, k, str(path))
    return Dataset(images, labels, split, file_sha256(path))


def _check_findings(labels: np.ndarray, names: list[str], where: str) -> None:
    bad = np.argwhere((labels != 0) & (labels != 1))
    if bad.size:
        row, col = (int(v) for v in bad[0])
        raise UserError(
            f"{where} row {row}: finding '{names[col]}' is {int(labels[row, col])}; each finding "
            "is 0 (absent) or 1 (present)"
        )


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


def _is_image_file(f: Path) -> bool:
    if f.name.startswith(".") or not f.is_file():
        return False
    if f.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if f.suffix:
        return False
    with open(f, "rb") as fh:  # DICOM files often have no suffix at all
        return is_dicom(f, fh.read(132))


def holds_dicom(files: FileList) -> bool:
    """Whether any file of the list is DICOM: its suffix, or the DICM magic where the suffix
    names no image format (DICOM files often have none)."""
    for i, name in enumerate(files.names):
        suffix = Path(name).suffix.lower()
        if suffix in DICOM_SUFFIXES:
            return True
        if suffix not in IMAGE_SUFFIXES:
            with open(files.path(i), "rb") as fh:
                if is_dicom(name, fh.read(132)):
                    return True
    return False


def _within(top: Path, p: Path) -> Path:
    """`p` itself, when it (through any symlink) lies inside the data folder `top`."""
    if not p.resolve().is_relative_to(top):
        raise UserError(
            f"{shown(str(p))} leads out of the data folder {shown(str(top))} (a symlink); "
            "copy the images into the data folder instead"
        )
    return p


def scan_folder(
    root: Path,
    split: str,
    class_names: list[str],
    labels_csv: str | Path | None = None,
    columns: Sequence[str] = (),
    missing_ok: bool = False,
    task: str | None = None,
) -> FileList:
    top = root.resolve()
    if labels_csv is None and (root / LABELS_CSV).is_file():
        labels_csv = _within(top, root / LABELS_CSV)
    if labels_csv is not None:
        return _scan_csv(root, Path(labels_csv), split, class_names, columns, missing_ok, task)
    if task == "multilabel":
        raise UserError(
            f"{root}: a multilabel model needs a {LABELS_CSV} with a path column and one 0/1 "
            f"column per finding ({', '.join(class_names)}); class folders hold one label each"
        )
    if columns and not missing_ok:
        raise UserError(
            f"group columns {list(columns)} need a {LABELS_CSV} with those columns; {root} is "
            "labelled by class folders (pass --labels CSV)"
        )
    # root/<split>/<class>/ when a split folder exists, else root/<class>/.
    base = _within(top, root / split) if (root / split).is_dir() else root
    folders = sorted(
        _within(top, d) for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    if not folders:
        raise UserError(
            f"{base} has no class folders; expected {base}/<class>/*.png|*.dcm, or a "
            f"{LABELS_CSV} (path,label) passed with --labels"
        )
    for d in folders:
        if d.name not in class_names:
            raise UserError(
                f"{d}: folder '{d.name}' is not a class in [labels] names {class_names}; "
                "rename it or add the class"
            )
    names, labels = [], []
    for d in folders:
        for f in sorted(d.iterdir()):
            if not f.name.startswith(".") and _is_image_file(_within(top, f)):
                names.append(f"{d.name}/{f.name}")
                labels.append(class_names.index(d.name))
    if not names:
        raise UserError(f"{base}: no images (*.png, *.jpg, *.tif, *.dcm) in the class folders")
    return FileList(base, names, np.asarray(labels, np.int64), split)


def _scan_csv(
    root: Path,
    csv_path: Path,
    split: str,
    class_names: list[str],
    columns: Sequence[str],
    missing_ok: bool,
    task: str | None = None,
) -> FileList:
    try:
        raw = csv_path.read_bytes()
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"labels file {csv_path} does not exist; check --labels") from None
    except UnicodeDecodeError:
        raise UserError(f"{csv_path} is not UTF-8 text; save the CSV as UTF-8") from None
    # Rows are taken one at a time: a site's CSV can list tens of thousands of images.
    rows = (
        (n, r) for n, r in enumerate(csv.reader(io.StringIO(text)), 1) if any(c.strip() for c in r)
    )
    try:
        header = [c.strip() for c in next(rows)[1]]
    except StopIteration:
        raise UserError(
            f"{csv_path} is empty; expected a header path,label[,more columns]"
        ) from None
    except csv.Error as exc:
        raise UserError(f"{csv_path} is not a readable CSV ({exc})") from None
    multi = task == "multilabel" or (
        task == "infer" and "label" not in header and set(class_names) <= set(header)
    )
    wanted = ["path", *(class_names if multi else ["label"])]
    if not set(wanted) <= set(header):
        raise UserError(
            f"{csv_path}: the header must name the columns {', '.join(wanted)}, got {header}"
            + (" (multi-label: one 0/1 column per [labels] names)" if multi else "")
        )
    if len(set(header)) != len(header):
        raise UserError(f"{csv_path}: the header repeats a column name; name each once")
    extra = _group_columns(csv_path, header, columns, missing_ok)
    col = {c: i for i, c in enumerate(header)}
    base = root.resolve()
    names: list[str] = []
    labels: list[Any] = []
    at: list[int] = []
    seen: set[str] = set()
    meta: dict[str, list[str]] = {c: [] for c in extra}
    splits: set[str] = set()
    for k, (line, row) in enumerate(_csv_rows(rows, csv_path)):
        where = f"{csv_path} line {line}"
        if len(row) != len(header):
            raise UserError(f"{where}: {len(row)} fields for {len(header)} columns")
        if "split" in col:
            splits.add(row[col["split"]].strip())
            if row[col["split"]].strip() != split:
                continue
        rel = row[col["path"]].strip()
        if not rel.isprintable():  # a NUL byte would reach the OS as a truncated path
            raise UserError(f"{where}: the path holds a control character; fix the path")
        name = _inside(base, rel, where).relative_to(base).as_posix()
        if name in seen:
            raise UserError(f"{where}: '{rel}' is listed twice; list each image once")
        seen.add(name)
        if multi:
            labels.append([_finding(row[col[f]].strip(), f, where) for f in class_names])
        else:
            labels.append(_label(row[col["label"]].strip(), class_names, where))
        for c in extra:
            value = row[col[c]].strip()
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in value) or len(value) > 200:
                raise UserError(f"{where}: column '{c}' holds control characters or >200 chars")
            meta[c].append(value)
        names.append(name)
        at.append(k)
    if not names:
        raise UserError(
            f"{csv_path}: no rows for split '{split}'"
            + (f"; choose --split from {sorted(splits)}" if splits else "")
        )
    return FileList(
        base,
        names,
        np.asarray(labels, np.int64),
        split,
        {c: np.asarray(v, dtype=str) for c, v in meta.items()},
        hashlib.sha256(raw).hexdigest(),
        np.asarray(at, np.int64),
    )


def row_index(source: Dataset | FileList) -> np.ndarray:
    """Where each image is listed: its labels-CSV row (FileList.rows), else its position in the
    npz split or in the sorted folder listing (class folder, then file name), from 0."""
    rows = source.rows if isinstance(source, FileList) else None
    return np.arange(len(source), dtype=np.int64) if rows is None else rows


def labels_origin(source: Dataset | FileList, labels_csv: str | Path | None) -> dict[str, Any]:
    """Where the labels came from and what a row index (row_index) points into; a CSV by its
    file name and sha256 only."""
    if isinstance(source, Dataset):
        split = f"{source.split}_images"
        return {
            "source": "npz",
            "file": None,
            "sha256": None,
            "statement": f"the npz's {source.split}_labels array",
            "row_index": f"the image's index in the npz's {split} array, from 0",
        }
    if not source.csv_sha256:
        return {
            "source": "class folders",
            "file": None,
            "sha256": None,
            "statement": "the class folder each image is in",
            "row_index": "the image's position in the folder listing sorted by class folder, "
            "then file name, from 0",
        }
    name = LABELS_CSV if labels_csv is None else shown(Path(labels_csv).name)
    given = "passed with --labels" if labels_csv is not None else "found in the data folder"
    return {
        "source": "--labels" if labels_csv is not None else "labels.csv in the data folder",
        "file": name,
        "sha256": source.csv_sha256,
        "statement": f"{name}, {given} (sha256 {source.csv_sha256[:16]}…)",
        "row_index": f"the row of {name}: 0 is the first row after the header; blank lines "
        "are not counted (pandas.read_csv's index)",
    }


def _group_columns(
    csv_path: Path, header: list[str], columns: Sequence[str], missing_ok: bool
) -> list[str]:
    """The named group columns this CSV has, each checked by name before any value is read."""
    wanted = list(dict.fromkeys(columns))
    for c in wanted:
        refuse_identifier(c, f"{csv_path}: group column")
        if not _COLUMN.match(c) or c in ("path", "label", "split"):
            raise UserError(
                f"{csv_path}: group column {shown(c)!r} must be a metadata column named with "
                "letters, digits and _ (e.g. age_band)"
            )
        if c not in header and not missing_ok:
            raise UserError(
                f"{csv_path}: group column '{c}' is not in its header "
                f"({', '.join(shown(h) for h in header)}); name a column it has"
            )
    return [c for c in wanted if c in header]


def _csv_rows(
    rows: Iterable[tuple[int, list[str]]], csv_path: Path
) -> Iterator[tuple[int, list[str]]]:
    try:
        yield from rows
    except csv.Error as exc:
        raise UserError(f"{csv_path} is not a readable CSV ({exc})") from None


def _inside(base: Path, rel: str, where: str) -> Path:
    """The CSV's path resolved inside the data folder (symlinks too), or a refusal."""
    if not rel:
        raise UserError(f"{where}: empty path")
    f = (base / rel).resolve()
    if not f.is_relative_to(base):
        raise UserError(
            f"{where}: path '{rel}' is outside the data folder {base}; "
            "list only images inside it, relative to it"
        )
    if not f.is_file():
        raise UserError(f"{where}: '{rel}' does not exist in {base}; fix the path")
    return f


def _label(value: str, class_names: list[str], where: str) -> int:
    if value in class_names:
        return class_names.index(value)
    if value.isdigit() and int(value) < len(class_names):
        return int(value)
    raise UserError(
        f"{where}: label '{value}' is not a class of [labels] names {class_names} "
        "(or its index); fix the label or list the class"
    )


def _finding(value: str, name: str, where: str) -> int:
    if value in ("0", "1"):
        return int(value)
    raise UserError(
        f"{where}: finding '{name}' is '{shown(value[:20])}'; each finding is 0 (absent) or 1 "
        "(present): a missing or uncertain label must be resolved before validation"
    )


def read_one(files: FileList, i: int, window: tuple[float, float] | None) -> tuple[np.ndarray, str]:
    """Image i in its own range, and its content hash (the file is read once)."""
    f = files.path(i)
    try:
        data = f.read_bytes()
    except OSError as exc:
        raise UserError(
            f"{f}: cannot read ({exc.strerror}); fix its permissions or remove it"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        return load_image(f, window, data), digest
    except ImageError as exc:
        raise UserError(f"{f}: {exc}") from None
    except Exception as exc:  # Pillow raises many types for corrupt files
        one = " ".join(str(exc).split())[:200]
        raise UserError(f"{f}: cannot read image ({one}); remove or replace it") from None


def read_files(files: FileList, pre: Preprocess | None = None) -> Dataset:
    """Every image of `files` in memory (see load_dataset), read in a thread pool."""
    window = pre.dicom_window if pre else None
    hasher = files.hasher()
    images: list[np.ndarray] = []
    native = True  # still all uint8 of one shape: kept as read (the historical behaviour)
    workers = default_workers()
    read = imap_ordered(
        lambda i: read_one(files, i, window), range(len(files)), workers, 4 * workers
    )
    for i, (img, digest) in enumerate(read):
        hasher.add(i, digest)
        if pre is not None and native:
            native = img.dtype == np.uint8 and (not images or img.shape == images[0].shape)
            if not native:
                images = [_prepared(pre, a, files.path(k)) for k, a in enumerate(images)]
        images.append(img if native or pre is None else _prepared(pre, img, files.path(i)))
    kinds = sorted({f"{a.shape} {a.dtype}" for a in images})
    if len(kinds) > 1:
        raise UserError(
            f"{files.base}: images have different sizes or bit depths ({', '.join(kinds[:3])}); "
            "they are resized as they load only where the model's preprocessing is known"
        )
    return Dataset(np.stack(images), files.labels, files.split, hasher.hexdigest(), files.metadata)


def _prepared(pre: Preprocess | None, img: np.ndarray, path: Path) -> np.ndarray:
    assert pre is not None
    try:
        return pre.prepare(img)
    except ImageError as exc:
        raise UserError(f"{path}: {exc}") from None
