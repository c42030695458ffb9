"""Streaming validation: images are read and preprocessed in a thread pool, in order, and
inferred chunk by chunk in the target's runner subprocess while the next chunks are decoded.
The dataset hash is computed as the files stream by; nothing grows with the number of images
but the scores (a few bytes each)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from packager.core.data import Dataset, FileList, default_workers, imap_ordered, read_one
from packager.core.errors import UserError
from packager.runtime.runner import WorkerFailed
from packager.shipped.preprocess import ImageError, Preprocess

CHUNK = 64


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, which (unlike ru_maxrss) starts anew
    at exec instead of inheriting the forking parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def write_frame(f: IO[bytes], x: np.ndarray | None, info: dict | None = None) -> None:
    """One frame: 8-byte header length, a JSON header, then the array's raw bytes."""
    head: dict[str, Any] = {"info": info} if x is None else {"dtype": x.dtype.str, "shape": x.shape}
    raw = json.dumps(head).encode()
    f.write(len(raw).to_bytes(8, "little") + raw)
    if x is not None:
        f.write(np.ascontiguousarray(x).data)
    f.flush()


def read_frame(f: IO[bytes]) -> np.ndarray | dict[str, Any] | None:
    """The next array; the end frame's info dict; None when the stream just ends."""
    head = _read_exact(f, 8)
    if head is None:
        return None
    meta = json.loads(_read_exact(f, int.from_bytes(head, "little")) or b"{}")
    if "info" in meta:
        return dict(meta["info"] or {})
    arr = np.empty(meta["shape"], np.dtype(meta["dtype"]))
    view = memoryview(arr).cast("B") if arr.nbytes else memoryview(b"")
    got = 0
    while got < arr.nbytes:
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise EOFError("stream ended inside a frame")
        got += n
    return arr


def _read_exact(f: IO[bytes], n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        part = f.read(n - len(buf))
        if not part:
            if buf:
                raise EOFError("stream ended inside a frame header")
            return None
        buf += part
    return buf


@dataclass
class Timings:
    """Seconds spent per stage, summed over the threads that did the work."""

    read: float = 0.0  # file bytes + hash + decode (DICOM LUTs, PNG inflate)
    preprocess: float = 0.0  # resize, scale, normalize, layout
    wall: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, read: float, pre: float) -> None:
        with self.lock:
            self.read += read
            self.preprocess += pre

    def to_dict(self) -> dict[str, float]:
        return {"read_s": self.read, "preprocess_s": self.preprocess, "wall_s": self.wall}


@dataclass
class StreamResult:
    scores: np.ndarray
    labels: np.ndarray
    sha256: str
    runtime: dict[str, Any]
    metadata: dict[str, np.ndarray]
    timings: Timings


def iter_chunks(
    source: Dataset | FileList,
    pre: Preprocess,
    chunk: int = CHUNK,
    workers: int | None = None,
    timings: Timings | None = None,
) -> tuple[Iterator[np.ndarray], Any]:
    """(model-input chunks in order, a callable giving the dataset's sha256 once consumed)."""
    timings = timings or Timings()
    if isinstance(source, Dataset):

        def slices() -> Iterator[np.ndarray]:
            for i in range(0, len(source), chunk):
                t0 = time.perf_counter()
                x = pre(source.images[i : i + chunk])
                timings.add(0.0, time.perf_counter() - t0)
                yield x

        return slices(), lambda: source.sha256
    files = source
    hasher = files.hasher()
    window = pre.dicom_window
    workers = workers or default_workers()

    def one(i: int) -> tuple[np.ndarray, str]:
        t0 = time.perf_counter()
        img, digest = read_one(files, i, window)
        t1 = time.perf_counter()
        try:
            x = pre(img[None])[0]
        except ImageError as exc:
            raise UserError(f"{files.path(i)}: {exc}") from None
        timings.add(t1 - t0, time.perf_counter() - t1)
        return x, digest

    def chunks() -> Iterator[np.ndarray]:
        buf: list[np.ndarray] = []
        done = imap_ordered(one, range(len(files)), workers, ahead=max(2 * workers, chunk // 2))
        for i, (x, digest) in enumerate(done):
            hasher.add(i, digest)
            buf.append(x)
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)

    return chunks(), hasher.hexdigest


def stream_predict(
    target: str,
    bundle: Path,
    options: dict[str, Any],
    fixed_batch: int | None,
    source: Dataset | FileList,
    pre: Preprocess,
    timeout_s: float,
    chunk: int = CHUNK,
    workers: int | None = None,
    on_scores: Callable[[int], None] = lambda done: None,
) -> StreamResult:
    """Scores for every image, streamed through the target's runner in a fresh subprocess.
    `timeout_s` bounds the wait for any one chunk, not the whole (site sets can be huge).
    `on_scores(done)` hears how many images are scored so far (from a reader thread)."""
    timings = Timings()
    start = time.perf_counter()
    chunks, digest = iter_chunks(source, pre, chunk, workers, timings)
    with tempfile.TemporaryDirectory(prefix="packager-stream-") as tmp:
        spec = Path(tmp) / "job.json"
        job = {
            "target": target,
            "bundle": str(bundle),
            "options": options,
            "batch_size": chunk,
            "fixed_batch": fixed_batch,
        }
        spec.write_text(json.dumps(job))
        from packager.runtime.runner import _die_with_parent  # the same guard as every worker

        proc = subprocess.Popen(
            [sys.executable, "-m", "packager.runtime.pipe_worker", str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            scores, info = _pump(proc, chunks, target, timeout_s, on_scores)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    timings.wall = time.perf_counter() - start
    labels, meta = source.labels, source.metadata
    return StreamResult(scores, labels, digest(), info, meta, timings)


def _pump(
    proc: subprocess.Popen,
    chunks: Iterator[np.ndarray],
    target: str,
    timeout_s: float,
    on_scores: Callable[[int], None],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Feed chunks to the worker (at most 2 in flight) and collect its scores."""
    assert proc.stdin and proc.stdout and proc.stderr
    err_tail: deque[str] = deque(maxlen=5)
    results: queue.Queue = queue.Queue()
    in_flight = threading.Semaphore(2)
    dead = threading.Event()

    def drain_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            if line.strip():
                err_tail.append(line.decode(errors="replace").strip())

    def read_scores() -> None:
        done = 0
        try:
            while isinstance(s := read_frame(proc.stdout), np.ndarray):  # type: ignore[arg-type]
                results.put(s)
                in_flight.release()
                done += len(s)
                on_scores(done)
            results.put(("info", s) if isinstance(s, dict) else ("error", None))
        except Exception as exc:  # a crashed worker: reported below with its stderr
            results.put(("error", exc))
        dead.set()
        in_flight.release()  # wake the sender: it finds the pipe closed

    threads = [threading.Thread(target=f, daemon=True) for f in (drain_stderr, read_scores)]
    for t in threads:
        t.start()

    def failed(why: str) -> WorkerFailed:
        proc.kill()
        tail = err_tail[-1] if err_tail else "no output"
        return WorkerFailed(f"streaming predict on {target} {why}: {tail}")

    out: list[np.ndarray] = []
    sent = 0
    try:
        for x in chunks:
            if not in_flight.acquire(timeout=timeout_s):
                raise failed(f"gave no scores within {timeout_s:.0f}s")
            if dead.is_set():
                break
            write_frame(proc.stdin, x)
            sent += 1
        write_frame(proc.stdin, None)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # the worker died: its stderr says why, below
    except BaseException:
        proc.kill()
        raise
    info: dict[str, Any] | None = None
    while info is None:
        try:
            item = results.get(timeout=timeout_s)
        except queue.Empty:
            raise failed(f"gave no scores within {timeout_s:.0f}s") from None
        if isinstance(item, tuple):
            if item[0] == "error":
                proc.wait()
                threads[0].join(timeout=5)
                raise failed(f"failed in its subprocess (exit {proc.returncode})")
            info = item[1]
        else:
            out.append(item)
    if len(out) != sent or proc.wait() != 0:
        threads[0].join(timeout=5)
        raise failed(f"failed in its subprocess (exit {proc.returncode})")
    return np.concatenate(out).astype(np.float32), info
