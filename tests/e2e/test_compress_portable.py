"""Layer compression gives the same bytes on every x86-64-v2 CPU.

compress_probe compresses a fixed input with the gzip (ISA-L) and zstd block
compressors and prints their SHA-256. It runs natively and under qemu-x86_64 with
several CPU models. ISA-L picks an implementation by CPU feature: every SSE4.2+
variant (SSE4.2, AVX, AVX2) hashes with the crc32 instruction and gives the same
bytes; CPUs without SSE4.2 (x86-64-v1: Core 2, qemu64, Opteron G1-G3) fall back to
ISA-L's C code with a different hash and give different, equally valid, gzip bytes.
zstd is the same everywhere. AVX-512 cannot be emulated by qemu's TCG (see
docs/determinism.md for how it was checked on real hardware).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BUILD_DIR = Path(os.environ.get("ENVSNAP_BUILD_DIR") or Path(__file__).resolve().parents[2] / "build")
PROBE = BUILD_DIR / "tests" / "fixtures" / "compress-probe" / "compress_probe"
QEMU = shutil.which("qemu-x86_64")

# Digests of the probe's output with Debian 12's ISA-L 2.30.0 and zstd 1.5.4: a change
# means a library update changed the bytes of layers (and thus their digests).
GZIP_V2 = "152adf23388a5544b8de44c2e2ebb9344143c9ccea150d68eb6415c22221098b"
GZIP_V1 = "271aef248e74679a2c06f10bc3c7e922b0e982d68935a3eba56d024e0e9f32ee"
ZSTD = "ac5e962cd388f6d8c1e097b2a9546e74a4dc21fa921836f8c1ba89816b1f3f1c"

# x86-64-v2 and later (SSE4.2, then AVX, AVX2) of Intel and AMD.
V2_MODELS = ["Nehalem", "Westmere", "SandyBridge", "IvyBridge", "Haswell", "Broadwell",
             "Skylake-Client", "Skylake-Server", "Icelake-Server", "EPYC", "EPYC-Rome", "EPYC-Milan"]
# Without SSE4.2.
V1_MODELS = ["qemu64", "Conroe", "Penryn", "Opteron_G3"]


def probe(*prefix):
    out = subprocess.run([*prefix, str(PROBE)], capture_output=True, text=True, timeout=600, check=True).stdout
    return dict(line.split() for line in out.splitlines())


def native_has_sse42():
    with open("/proc/cpuinfo") as f:
        return " sse4_2" in f.read()


@pytest.fixture(scope="module")
def native():
    if not PROBE.exists():
        pytest.fail(f"{PROBE} is missing: build the project first")
    return probe()


def test_native_digests_are_the_known_ones(native):
    assert native["zstd"] == ZSTD
    assert native["gzip"] == (GZIP_V2 if native_has_sse42() else GZIP_V1)


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian package qemu-user) is not installed")
@pytest.mark.parametrize("model", V2_MODELS)
def test_v2_cpus_give_the_native_bytes(native, model):
    got = probe(QEMU, "-cpu", model)
    assert got == {"gzip": GZIP_V2, "zstd": ZSTD}


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian package qemu-user) is not installed")
@pytest.mark.parametrize("model", V1_MODELS)
def test_pre_sse42_cpus_give_other_gzip_bytes(native, model):
    got = probe(QEMU, "-cpu", model)
    assert got == {"gzip": GZIP_V1, "zstd": ZSTD}
