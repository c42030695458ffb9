"""Find PneumoniaMNIST: --data, ../shared/data/, the cache, else the published MedMNIST file.

The download is the file MedMNIST itself fetches (medmnist/info.py, MedMNIST v2/v3 on Zenodo),
checked against its published MD5 before it is used.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from packager.core.errors import UserError

FILENAME = "pneumoniamnist.npz"
URL = "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1"
MD5 = "28209eda62fecd6e6a2d98b1501bb15f"
REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """$PACKAGER_CACHE, else $XDG_CACHE_HOME/packager, else ~/.cache/packager."""
    if os.environ.get("PACKAGER_CACHE"):
        return Path(os.environ["PACKAGER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "packager"


def default_candidates() -> list[Path]:
    """Where the dataset is looked for, in order, when --data is not given."""
    shared = Path("..") / "shared" / "data" / FILENAME
    return [Path.cwd() / shared, REPO / shared, cache_dir() / FILENAME]


def find_data(
    data: Path | None,
    candidates: Iterable[Path] | None = None,
    url: str = URL,
    md5: str = MD5,
) -> Path:
    """The dataset's path; downloads into the cache when no copy is found."""
    if data is not None:
        if not data.is_file():
            raise UserError(f"--data {data} does not exist; pass the path of {FILENAME}")
        return data.resolve()
    found = candidates if candidates is not None else default_candidates()
    for path in found:
        if path.is_file():
            return path.resolve()
    return download(url, md5, cache_dir() / FILENAME)


def download(url: str, md5: str, dest: Path, timeout_s: float = 60.0) -> Path:
    """Fetch `url` to `dest` (atomically) and check its MD5; one-line UserError when offline."""
    how = f"download {URL} (md5 {MD5}) and pass --data PATH"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(part, "wb") as f:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"PneumoniaMNIST not found and the download failed ({reason}); {how}"
        ) from None
    if h.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise UserError(f"the downloaded {FILENAME} has md5 {h.hexdigest()}, expected {md5}; {how}")
    part.replace(dest)
    return dest


def main() -> None:
    """`python -m packager.example.data [PATH]`: print the dataset's path, downloading it
    into the cache first when no copy is found (CI steps use this)."""
    try:
        print(find_data(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
    except UserError as exc:
        print(f"data: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
