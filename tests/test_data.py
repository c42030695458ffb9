from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from packager.core.data import load_dataset
from packager.core.errors import UserError
from packager.shipped.preprocess import Preprocess

NAMES = ["normal", "pneumonia"]


def test_medmnist_npz_splits(data_path: Path) -> None:
    test = load_dataset(data_path, "test", NAMES)
    assert len(test) == 624 and int(test.labels.sum()) == 390
    assert test.images.shape == (624, 28, 28) and test.images.dtype == np.uint8
    assert len(load_dataset(data_path, "val", NAMES)) == 524
    with pytest.raises(UserError, match="choose --split from"):
        load_dataset(data_path, "holdout", NAMES)


def test_image_folder_matches_npz(tmp_path: Path, data_path: Path) -> None:
    ds = load_dataset(data_path, "val", NAMES).subset(20, seed=1)
    for i, (img, label) in enumerate(zip(ds.images, ds.labels, strict=True)):
        d = tmp_path / NAMES[label]
        d.mkdir(exist_ok=True)
        Image.fromarray(img).save(d / f"{i:03d}.png")
    folder = load_dataset(tmp_path, "test", NAMES)
    assert sorted(folder.labels.tolist()) == sorted(ds.labels.tolist())
    pre = Preprocess(64, 3, "NCHW", 1 / 255, (0.5,), (0.5,), "float32")
    assert pre(folder.images).shape == (len(ds), 3, 64, 64)


def test_folder_with_unknown_class_is_refused(tmp_path: Path) -> None:
    (tmp_path / "covid").mkdir()
    with pytest.raises(UserError, match="covid"):
        load_dataset(tmp_path, "test", NAMES)


def test_preprocess_layouts_and_dtypes() -> None:
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    nchw = Preprocess(4, 3, "NCHW", 1 / 255, (0.5,), (0.5,), "float32")(img)
    nhwc = Preprocess(4, 3, "NHWC", 1 / 255, (0.5,), (0.5,), "float16")(img)
    assert nchw.shape == (1, 3, 4, 4) and nhwc.shape == (1, 4, 4, 3) and nhwc.dtype == np.float16
    assert np.allclose(nchw[0, 0], (img[0] / 255 - 0.5) / 0.5)
    assert np.allclose(nchw.transpose(0, 2, 3, 1), nhwc, atol=1e-3)
    gray = Preprocess(8, 1, "NCHW", 1.0, (0.0,), (1.0,), "float32")(
        np.zeros((2, 4, 4, 3), np.uint8)
    )
    assert gray.shape == (2, 1, 8, 8)


def test_preprocess_round_trips_through_json(tmp_path: Path) -> None:
    pre = Preprocess(64, 3, "NCHW", 1 / 255, (0.5,), (0.5,), "float32")
    (tmp_path / "p.json").write_text(pre.to_json())
    assert Preprocess.from_json(tmp_path / "p.json") == pre
