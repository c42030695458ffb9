"""Issue 24's concurrency check: ROUNDS rounds of PROCS concurrent in-place `packager validate`
of one published bundle, each followed by `packager verify` (with --pubkey when --key is
given) of the folder and the tarball. Every run must publish a new generation or refuse in one
line; no traceback; verify green after every round.

    python scripts/concurrent_validate.py dist/NAME-VERSION/TARGET --data DATA.npz \\
        [--key release.key] [--rounds 24] [--procs 4]

(tests/test_trust_publish.py::test_concurrent_in_place_validates_never_corrupt runs 3 x 4.)"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

PACKAGER = [sys.executable, "-m", "packager.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--key", type=Path, help="release key: re-sign each new generation")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--procs", type=int, default=4)
    a = ap.parse_args()
    validate = [*PACKAGER, "validate", str(a.bundle), "--data", str(a.data), "--quiet"]
    verify_extra: list[str] = []
    if a.key:
        validate += ["--sign", str(a.key)]
        verify_extra = ["--pubkey", str(a.key.with_name(a.key.name + ".pub"))]
    tar = a.bundle.with_name(a.bundle.name + ".tar.gz")
    published = refused = 0
    t0 = time.perf_counter()
    for n in range(1, a.rounds + 1):
        procs = [
            subprocess.Popen(validate, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(a.procs)
        ]
        for p in procs:
            _, err = p.communicate(timeout=900)
            if "Traceback" in err or p.returncode not in (0, 2):
                print(f"round {n}: exit {p.returncode}\n{err}")
                return 1
            published += p.returncode == 0
            refused += p.returncode == 2
        for path in (a.bundle, tar):
            v = subprocess.run(
                [*PACKAGER, "verify", str(path), *verify_extra], capture_output=True, text=True
            )
            if v.returncode != 0:
                print(f"round {n}: verify {path} failed\n{v.stdout}{v.stderr}")
                return 1
        print(f"round {n}: verify green (folder and tarball)", flush=True)
    print(
        f"{a.rounds} rounds x {a.procs}: {published} published a new generation, {refused} "
        f"refused in one line, 0 tracebacks, verify green every round "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
