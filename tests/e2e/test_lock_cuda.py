"""The live capture of "/" finds the CUDA toolkit at /usr/local/cuda and the cuDNN and
NCCL headers beside it, with the versions these files give when read directly."""

import glob
import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import capture, envsnap

CUDA = Path("/usr/local/cuda")

# These machines carry a real CUDA toolkit at /usr/local/cuda: its absence is a failure.


def test_cuda_tree_present():
    assert CUDA.exists(), "no /usr/local/cuda: this test needs the machine's CUDA toolkit"


def include_dirs(real):
    return [os.path.join(real, "include"),
            *sorted(glob.glob(os.path.join(real, "targets", "*", "include")))]


def find_header(real, name):
    for d in include_dirs(real):
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return os.path.realpath(path)
    return None


def defines(path):
    """#define NAME VALUE pairs of a C header (values as written)."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"^\s*#\s*define\s+(\w+)\s+(.*?)\s*(/[/*].*)?$", line)
            if m and m.group(1) not in out:
                out[m.group(1)] = m.group(2)
    return out


def expected_toolkit():
    """{path, kind, version, source} for /usr/local/cuda, read from its files in the
    order docs/lock-format.md gives: version.json, version.txt, dist-info, header."""
    real = os.path.realpath(CUDA)
    entry = {"path": real, "kind": "local"}
    version_json = os.path.join(real, "version.json")
    version_txt = os.path.join(real, "version.txt")
    metadata = sorted(glob.glob(os.path.join(real, "nvidia_cuda_runtime*.dist-info", "METADATA")) +
                      glob.glob(os.path.join(real, "*", "nvidia_cuda_runtime*.dist-info", "METADATA")))
    header = find_header(real, "cuda_runtime_api.h")
    if os.path.isfile(version_json):
        with open(version_json, encoding="utf-8") as f:
            entry.update(version=json.load(f)["cuda"]["version"], source="version.json")
    elif os.path.isfile(version_txt):
        with open(version_txt, encoding="utf-8") as f:
            version = re.search(r"CUDA Version\s+([0-9.]+)", f.read()).group(1)
        entry.update(version=version, source="version.txt")
    elif metadata:
        assert len(metadata) == 1, metadata
        with open(metadata[0], encoding="utf-8") as f:
            version = re.search(r"^Version:\s*(\S+)\s*$", f.read(), re.M).group(1)
        entry.update(version=version, source="dist-info")
    elif header:
        code = int(defines(header)["CUDART_VERSION"])
        entry.update(version=f"{code // 1000}.{code % 1000 // 10}", source="header")
    else:
        pytest.fail(f"no version file under {real}: extend this test")
    return entry


def expected_cudnn():
    real = os.path.realpath(CUDA)
    for name in ("cudnn_version.h", "cudnn.h"):
        path = find_header(real, name)
        if path and "CUDNN_MAJOR" in defines(path):
            d = defines(path)
            return {"path": path, "source": "header",
                    "version": f"{d['CUDNN_MAJOR']}.{d['CUDNN_MINOR']}.{d['CUDNN_PATCHLEVEL']}"}
    return None


def expected_nccl():
    path = find_header(os.path.realpath(CUDA), "nccl.h")
    if not path:
        return None
    d = defines(path)
    version = f"{d['NCCL_MAJOR']}.{d['NCCL_MINOR']}.{d['NCCL_PATCH']}"
    suffix = d.get("NCCL_SUFFIX", '""').strip('"')
    return {"path": path, "source": "header", "version": version + suffix}


@pytest.fixture(scope="module")
def lock(nvml_env):
    return capture("/", env=nvml_env)


def test_toolkit(lock):
    expected = expected_toolkit()
    toolkits = lock["lock"]["cuda"]["toolkits"]
    paths = [t["path"] for t in toolkits]
    assert len(paths) == len(set(paths)), "a toolkit directory is listed twice"
    if CUDA.is_symlink():
        assert str(CUDA) not in paths, "the /usr/local/cuda symlink was listed, not its target"
    assert [t for t in toolkits if t["path"] == expected["path"]] == [expected]


def test_cudnn(lock):
    expected = expected_cudnn()
    assert expected is not None, "no cuDNN header under /usr/local/cuda"
    assert expected in lock["lock"]["cuda"]["cudnn"]


def test_nccl(lock):
    expected = expected_nccl()
    assert expected is not None, "no nccl.h under /usr/local/cuda"
    assert expected in lock["lock"]["cuda"]["nccl"]


def test_cuda_lists_sorted_by_path(lock):
    for key, entries in lock["lock"]["cuda"].items():
        paths = [e["path"] for e in entries]
        assert paths == sorted(paths, key=str.encode), key


def test_live_capture_is_fast(nvml_env):
    """Target: a live capture of "/" well under a second (best of three)."""
    best = float("inf")
    for _ in range(3):
        start = time.monotonic()
        envsnap("capture", "/", "--lock-only", "-o", "/dev/null", env=nvml_env)
        best = min(best, time.monotonic() - start)
    assert best < 1.0, f"live capture of / took {best:.2f} s (best of 3)"
