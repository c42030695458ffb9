"""Find PneumoniaMNIST: --data, ../shared/data/, the cache, else the published MedMNIST file.

The download is the file MedMNIST itself fetches (medmnist/info.py, MedMNIST v2/v3 on Zenodo),
through pooch: checked against its published MD5 before it is used, retried, with a progress bar
on a terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from packager.core.errors import UserError

FILENAME = "pneumoniamnist.npz"
URL = "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1"
# MedMNIST publishes only this MD5 for the file, so it is the hash pooch checks.
KNOWN_HASH = "md5:28209eda62fecd6e6a2d98b1501bb15f"
RETRIES = 3  # pooch waits 1 s, 2 s, 3 s between attempts
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
    known_hash: str = KNOWN_HASH,
    retries: int = RETRIES,
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
    return download(url, known_hash, cache_dir(), retries)


def download(url: str, known_hash: str, folder: Path, retries: int = RETRIES) -> Path:
    """Fetch `url` to `folder/FILENAME` with pooch, which writes a temporary file, checks the
    hash and only then renames it; one-line UserError when every attempt failed."""
    import pooch

    fetcher = pooch.create(
        path=folder,
        base_url="",
        registry={FILENAME: known_hash},
        urls={FILENAME: url},
        retry_if_failed=retries,
    )
    downloader = pooch.HTTPDownloader(progressbar=sys.stderr.isatty(), timeout=60)
    try:
        return Path(fetcher.fetch(FILENAME, downloader=downloader))
    except (ValueError, OSError) as exc:  # a wrong hash; requests' errors are OSErrors
        reason = " ".join(str(exc).split())
        raise UserError(
            f"PneumoniaMNIST not found and the download failed ({reason}); "
            f"download {URL} ({KNOWN_HASH}) and pass --data PATH"
        ) from None


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
