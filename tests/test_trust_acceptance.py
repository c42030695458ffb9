"""The shipped self-test's acceptance record and its one-line summary, in-process on the
hand-built bundles of test_trust_replay.py (issue 28): a runtime this host cannot run (a real
gpu-tensorrt runtime.py on CPU-only ONNX Runtime: exit 3, a not-run record), packager's own
check in front of the bundle's, the record's time, the host description (from /proc/cpuinfo
text written here, and macOS's sysctl as a script on PATH), and image files the shipped
preprocessing refuses."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import platform
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime
import pytest

from packager.core import documents
from packager.shipped import selftest as shipped
from packager.shipped.preprocess import Preprocess
from tests.test_trust_replay import RECORDED, black_png, make_bundle, rewrite_golden, seal

GOLDEN = [0.25, 0.75]


def self_test(bundle: Path, path: Path, kind: str = "main") -> tuple[int, dict[str, Any]]:
    code = shipped.self_test(bundle, path, kind)
    record = json.loads(path.read_text())
    documents.Acceptance.model_validate(record)  # the published schema, closed
    return code, record


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.filterwarnings("ignore:Specified provider")  # ONNX Runtime's, for the missing one
@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="a CUDA host"
)
@pytest.mark.parametrize(
    ("kind", "provider"),
    [("ort-cuda", "CUDAExecutionProvider"), ("main", "TensorrtExecutionProvider")],
)
def test_a_runtime_this_host_lacks_writes_a_not_run_record(
    tmp_path: Path, capsys: pytest.CaptureFixture, kind: str, provider: str
) -> None:
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED, target="gpu_tensorrt")
    path = tmp_path / "record.json"
    code, record = self_test(bundle, path, kind)
    assert code == 3 and record["verdict"] == "not-run"
    manifest, runtime = record["checks"]
    assert manifest["name"] == "manifest" and manifest["status"] == "passed"
    assert set(runtime) == {"name", "status", "reason"}
    assert (runtime["name"], runtime["status"]) == ("runtime", "not-run")
    reason = runtime["reason"]
    assert reason.startswith(f"this host cannot run the bundle: ONNX Runtime has no {provider} ")
    assert record["runtime"] is None and record["host"]["gpu"] is None
    assert record["host"]["runtime"] == {"runtime": None, "version": None, "device": None}
    sha = sha256(bundle / "manifest.json")
    assert (
        record["integrity"]["statement"] == f"manifest sha256 {sha}, compare with the release notes"
    )
    assert capsys.readouterr().out == (
        f"self-test not run: {reason}; integrity: manifest sha256 {sha}, compare with the "
        f"release notes (checked by the bundle's own code); record: {path}\n"
    )


def test_the_kind_asked_for_is_the_runtime_opened(tmp_path: Path) -> None:
    """gpu-tensorrt's "proxy": its graph on ONNX Runtime CPU, which this host runs."""
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED, target="gpu_tensorrt")
    code, record = self_test(bundle, tmp_path / "record.json", "proxy")
    assert code == 0 and record["verdict"] == "accepted"
    assert record["checks"][1] == {"name": "runtime", "status": "passed", "kind": "proxy"}
    assert record["runtime"]["device"] == "CPU" and record["host"]["runtime"]["device"] == "CPU"


def test_a_bundle_without_its_runtime_is_refused_not_called_unavailable(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED)
    (bundle / "runtime.py").unlink()
    seal(bundle)
    with pytest.raises(shipped.Refused) as exc:
        shipped.self_test(bundle, tmp_path / "record.json")
    assert exc.value.code == 2 and "has no runtime.py" in str(exc.value)
    assert not (tmp_path / "record.json").exists()


def test_a_record_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED)
    path = tmp_path / "no-such-folder" / "record.json"
    with pytest.raises(shipped.Refused) as exc:
        shipped.self_test(bundle, path)
    text = str(exc.value)
    assert text.startswith(f"cannot write the acceptance record {path} (")
    assert text.endswith("); pass --record PATH") and "No such file" in text
    assert exc.value.code == 2


def test_a_bundle_without_a_manifest_is_rejected_unverified(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED)
    (bundle / "manifest.json").unlink()
    path = tmp_path / "record.json"
    code, record = self_test(bundle, path)
    assert code == 1 and record["verdict"] == "rejected"
    assert record["bundle"] == dict.fromkeys(
        ("name", "version", "target", "precision", "manifest_sha256")
    )
    assert record["checks"] == [
        {"name": "manifest", "status": "failed", "files": 0, "problems": ["missing: manifest.json"]}
    ]
    assert capsys.readouterr().out == (
        "self-test FAILED: the bundle differs from its manifest: missing: manifest.json; "
        f"integrity: unverified (checked by the bundle's own code); record: {path}\n"
    )


def test_the_summary_names_the_first_five_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED)
    for name in "gfedcba":
        (bundle / f"{name}.txt").write_text(name)
    path = tmp_path / "record.json"
    code, record = self_test(bundle, path)
    assert record["checks"][0]["problems"] == [f"added: {n}.txt" for n in "abcdefg"]
    assert code == 1 and capsys.readouterr().out == (
        "self-test FAILED: the bundle differs from its manifest: added: a.txt, added: b.txt, "
        "added: c.txt, added: d.txt, added: e.txt; integrity: unverified (checked by the "
        f"bundle's own code); record: {path}\n"
    )


def test_packagers_own_check_comes_first_in_the_summary(tmp_path: Path) -> None:
    """`packager selftest` puts its integrity check before the bundle's checks
    (hospital/selftest.py): its failure alone, or the bundle's own verdict after it."""
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED)
    sha = sha256(bundle / "manifest.json")
    by_packager = shipped.integrity_basis(sha, checked_by="packager")
    tail = f"; integrity: manifest sha256 {sha}, compare with the release notes (checked by packager); record: R"
    problems = [f"changed: {n}.py" for n in "abcdefg"]
    failed = {"name": "integrity", "status": "failed", "checked_by": "packager"}
    record = shipped.new_record(bundle, {}, [failed | {"problems": problems}], by_packager)
    documents.Acceptance.model_validate(record)
    assert record["verdict"] == "rejected"
    assert shipped.summary_line(record, Path("R")) == (
        "self-test FAILED: packager's check failed, so no bundle code ran: changed: a.py, "
        "changed: b.py, changed: c.py, changed: d.py, changed: e.py" + tail
    )
    passed = failed | {"status": "passed", "problems": []}
    _, record = self_test(bundle, tmp_path / "record.json")
    record["checks"].insert(0, passed)
    record["integrity"] = by_packager
    assert shipped.summary_line(record, Path("R")).startswith("self-test passed: 3 golden cases")
    (bundle / "extra.txt").write_text("x")
    _, record = self_test(bundle, tmp_path / "record.json")
    record["checks"].insert(0, passed)
    assert shipped.summary_line(record, Path("R")).startswith(
        "self-test FAILED: the bundle differs from its manifest: added: extra.txt; integrity: "
        "unverified (checked by the bundle's own code)"
    )


def test_the_record_is_dated_in_utc(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED)
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    _, record = self_test(bundle, tmp_path / "record.json")
    after = datetime.datetime.now(datetime.timezone.utc)
    at = datetime.datetime.fromisoformat(record["checked_at"])
    assert at.utcoffset() == datetime.timedelta(0) and before <= at <= after
    assert at.microsecond == 0


def test_the_summary_lists_every_format_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED, formats=("png", "jpeg"))
    code, record = self_test(bundle, tmp_path / "record.json")
    assert code == 0 and record["checks"][2]["formats"] == ["png", "jpeg"]
    assert capsys.readouterr().out.startswith(
        "self-test passed: 3 golden cases (1 image files through preprocess.py: png, jpeg), "
    )


def test_an_image_file_is_read_as_its_name_says(tmp_path: Path) -> None:
    """A PNG named .dcm is read as DICOM, as `predict.py scan.dcm` would, which this bundle
    does not read: unreadable, with the preprocessing's own error, its whitespace collapsed
    and cut to 300 characters (the bundle lists many formats, so the error is longer)."""
    formats = ("png", *(f"format{i}" for i in range(40)))
    bundle = make_bundle(tmp_path / "b", GOLDEN, GOLDEN, RECORDED, formats=formats)
    png = black_png()
    rewrite_golden(
        bundle,
        raw_bytes=np.frombuffer(png + png, np.uint8),
        raw_ends=np.array([len(png), 2 * len(png)], np.int64),
        raw_names=np.array(["black.png", "scan.dcm"]),
        raw_kinds=np.array(["png", "png-named-dcm"]),
        raw_probs=np.array([[1.0, 0.0], [1.0, 0.0]], np.float32),
    )
    pre = Preprocess(1, 1, "NCHW", 1 / 255, (0.0,), (1.0,), "float32", formats=formats)
    with pytest.raises(ValueError) as exc:
        pre.load("scan.dcm", png)
    error = str(exc.value)
    assert len(error) > 300 and "DICOM" in error
    _, record = self_test(bundle, tmp_path / "record.json")
    pre_check = record["checks"][2]
    assert pre_check["unreadable"] == [
        {"case": 3, "kind": "png-named-dcm", "error": " ".join(error.split())[:300]}
    ]
    assert len(pre_check["unreadable"][0]["error"]) == 300
    assert record["checks"][3]["cases"] == 3  # the two tensor cases and black.png


def test_the_host_keeps_the_runtimes_gpu() -> None:
    gpu = {"name": "NVIDIA L4", "compute_capability": "8.9", "memory_mb": 22478}
    info = {"runtime": "tensorrt", "version": "10.3", "device": "GPU", "gpu": gpu, "threads": 1}
    host = shipped.host_fingerprint(info)
    assert host["gpu"] == gpu
    assert host["runtime"] == {"runtime": "tensorrt", "version": "10.3", "device": "GPU"}
    none = shipped.host_fingerprint(None)
    assert none["gpu"] is None and set(none["runtime"].values()) == {None}


def cpuinfo(monkeypatch: pytest.MonkeyPatch, text: str | None, system: str = "linux") -> None:
    """/proc/cpuinfo as `text` (None: absent, as on macOS) and sys.platform as `system`, for
    the self-test module only."""

    def fake_open(path: str, *args: Any, **kwargs: Any) -> io.StringIO:
        assert path == "/proc/cpuinfo"
        if text is None:
            raise FileNotFoundError(path)
        return io.StringIO(text)

    monkeypatch.setattr(shipped, "open", fake_open, raising=False)
    monkeypatch.setattr(shipped, "sys", SimpleNamespace(platform=system))


def fallback() -> str:
    return platform.processor() or platform.machine()


def test_an_arm_cpuinfo_gives_its_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux on ARM: no model name, the flags under Features."""
    text = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\n\nFeatures\t: fp sve\n"
    cpuinfo(monkeypatch, text)
    assert shipped.cpu_model_and_flags() == (fallback(), {"fp", "asimd", "evtstrm", "aes", "sve"})
    assert shipped.host_fingerprint(None)["isa_flags"] == ["asimd"]


def test_a_model_name_may_hold_a_colon(monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo(monkeypatch, "model name\t: Virtual CPU: 8 cores\nflags\t\t: fpu avx2 fma\n")
    assert shipped.cpu_model_and_flags() == ("Virtual CPU: 8 cores", {"fpu", "avx2", "fma"})
    assert shipped.host_fingerprint(None)["isa_flags"] == ["avx2", "fma"]


SYSCTL = """#!/bin/sh
if [ "$#" = 2 ] && [ "$1" = "-n" ] && [ "$2" = "machdep.cpu.brand_string" ]; then
  printf '%s\\n' "$BRAND"
  exit 0
fi
exit 1
"""


@pytest.mark.parametrize(
    ("system", "brand", "expected"),
    [
        ("darwin", "  Apple M2 Pro  ", "Apple M2 Pro"),
        ("darwin", "", None),  # sysctl says nothing: the platform module's name
        ("linux", "Apple M2 Pro", None),  # no /proc/cpuinfo elsewhere: sysctl is not asked
    ],
)
def test_macos_names_its_cpu_with_sysctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: str, brand: str, expected: str | None
) -> None:
    (tmp_path / "sysctl").write_text(SYSCTL)
    (tmp_path / "sysctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("BRAND", brand)
    cpuinfo(monkeypatch, None, system)
    assert shipped.cpu_model_and_flags() == (expected or fallback(), frozenset())
