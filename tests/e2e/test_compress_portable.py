"""Layer compression gives the same bytes on every x86-64 CPU.

compress_probe compresses a fixed input with the gzip (libdeflate) and zstd block
compressors and prints their SHA-256. It runs natively and under qemu-x86_64 with
CPU models from x86-64-v1 (no SSE4.2, no PCLMULQDQ) to AVX2 machines of Intel and
AMD, so each of libdeflate's CRC-32 routines (plain, PCLMULQDQ, PCLMULQDQ with AVX)
runs: the bytes must be the same everywhere. (ISA-L, tried first, gave other gzip
bytes without SSE4.2, and other bytes from run to run: docs/determinism.md.)
AVX-512 cannot be emulated by qemu's TCG; Debian's libdeflate 1.14 has no AVX-512
code.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BUILD_DIR = Path(os.environ.get("ENVSNAP_BUILD_DIR") or Path(__file__).resolve().parents[2] / "build")
PROBE = BUILD_DIR / "tests" / "fixtures" / "compress-probe" / "compress_probe"
QEMU = shutil.which("qemu-x86_64")

# Digests of the probe's output with Debian 12's libdeflate 1.14 (level 1) and zstd
# 1.5.4: a change means a library update changed the bytes of layers (and thus their
# digests).
GZIP = "4903259f3e09f29eff9d7f45e979606a5256baba1f4463ef821073a8ff4894b0"
ZSTD = "ac5e962cd388f6d8c1e097b2a9546e74a4dc21fa921836f8c1ba89816b1f3f1c"

MODELS = ["qemu64", "Conroe", "Penryn", "Opteron_G3", "Nehalem", "Westmere", "SandyBridge", "IvyBridge",
          "Haswell", "Broadwell", "Skylake-Client", "Skylake-Server", "Icelake-Server", "EPYC", "EPYC-Rome",
          "EPYC-Milan"]


def probe(*prefix):
    out = subprocess.run([*prefix, str(PROBE)], capture_output=True, text=True, timeout=600, check=True).stdout
    return dict(line.split() for line in out.splitlines())


@pytest.fixture(scope="module")
def native():
    if not PROBE.exists():
        pytest.fail(f"{PROBE} is missing: build the project first")
    return probe()


def test_native_digests_are_the_known_ones(native):
    assert native == {"gzip": GZIP, "zstd": ZSTD}


@pytest.mark.parametrize("model", MODELS)
def test_every_cpu_gives_the_native_bytes(native, model):
    if QEMU is None:
        pytest.fail("qemu-x86_64 is missing: scripts/setup.sh installs Debian's qemu-user")
    assert probe(QEMU, "-cpu", model) == {"gzip": GZIP, "zstd": ZSTD}
