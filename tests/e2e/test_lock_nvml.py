"""The NVIDIA section of a live capture: the fake NVML library (two H100s), a hanging
NVML that must time out, and, on a machine with a GPU, the real driver."""

import ctypes.util
import glob
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import FAKE_NVML, capture_proc, lock_warnings, stderr_warnings

FAKE_GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
            "memory_bytes": 85520809984, "mig_mode": "disabled"}
PCI_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")
TIMEOUT_WORDS = re.compile(r"time[ds]?[ -]?out", re.I)


@pytest.fixture(scope="module")
def fake_nvml():
    if not FAKE_NVML.is_file():
        pytest.fail(f"the fake NVML library is not built: {FAKE_NVML}")
    return str(FAKE_NVML)


def test_fake_nvml(fake_nvml):
    lock, proc = capture_proc("/", env={"ENVSNAP_NVML_LIBRARY": fake_nvml})
    nvidia = lock["lock"]["nvidia"]
    assert nvidia["source"] == "nvml"
    assert nvidia["driver"] == "535.104.05"
    assert nvidia["cuda_driver"] == "12.2"
    gpus = nvidia["gpus"]
    assert [g["index"] for g in gpus] == [0, 1]
    for gpu in gpus:
        assert {k: gpu[k] for k in FAKE_GPU} == FAKE_GPU
        assert set(gpu) == {"index", "uuid", "pci_bus_id", *FAKE_GPU}
        assert gpu["uuid"].startswith("GPU-")
        assert PCI_BUS_ID.match(gpu["pci_bus_id"]), gpu["pci_bus_id"]
    assert len({g["uuid"] for g in gpus}) == 2
    assert len({g["pci_bus_id"] for g in gpus}) == 2
    assert not [w for w in lock_warnings(lock) if fake_nvml in w]


def processes_holding(path, marker):
    """PIDs of processes that map `path` and carry `marker` in their environment."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/maps", "rb") as f:
                if os.fsencode(path) in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_hanging_nvml_times_out(fake_nvml):
    start = time.monotonic()
    lock, proc = capture_proc("/", "--nvml-timeout", "1", timeout=60,
                              env={"ENVSNAP_NVML_LIBRARY": fake_nvml, "FAKE_NVML_HANG": "1"})
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"capture with a hanging NVML took {elapsed:.1f} s"
    nvidia = lock["lock"]["nvidia"]
    assert nvidia["source"] in ("proc", "soname", "none")
    assert "gpus" not in nvidia
    timeouts = [w for w in lock_warnings(lock) if TIMEOUT_WORDS.search(w)]
    assert timeouts, lock_warnings(lock)
    assert any(fake_nvml in w for w in timeouts), timeouts
    assert [w for w in stderr_warnings(proc) if TIMEOUT_WORDS.search(w)] == timeouts
    # The hung NVML child must not outlive the capture.
    deadline = time.monotonic() + 3
    while processes_holding(fake_nvml, b"FAKE_NVML_HANG=1") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_holding(fake_nvml, b"FAKE_NVML_HANG=1") == []


def real_nvml_library():
    found = ctypes.util.find_library("nvidia-ml")
    if found:
        return found
    for pattern in ("/usr/lib/*-linux-gnu/libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.1",
                    "/usr/lib/libnvidia-ml.so.1", "/usr/local/nvidia/lib64/libnvidia-ml.so.1"):
        hits = glob.glob(pattern)
        if hits:
            return hits[0]
    return None


@pytest.mark.gpu
def test_real_gpu():
    if not os.path.exists("/dev/nvidia0") or real_nvml_library() is None:
        print("skipped: no GPU")
        pytest.skip("skipped: no GPU")
    lock, proc = capture_proc("/", env={"ENVSNAP_NVML_LIBRARY": None})
    nvidia = lock["lock"]["nvidia"]
    assert nvidia["source"] == "nvml", lock_warnings(lock)
    assert nvidia["gpus"], nvidia
    assert [g["index"] for g in nvidia["gpus"]] == list(range(len(nvidia["gpus"])))
    assert re.match(r"^[0-9]+\.[0-9]+(\.[0-9]+)?$", nvidia["driver"])
    if os.path.exists("/proc/driver/nvidia/version"):
        with open("/proc/driver/nvidia/version", encoding="utf-8", errors="replace") as f:
            assert nvidia["driver"] in f.read()
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=index,name,uuid,driver_version,pci.bus_id",
                              "--format=csv,noheader"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, check=True, timeout=60, text=True).stdout
        rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
        assert [(g["name"], g["uuid"]) for g in nvidia["gpus"]] == [(r[1], r[2]) for r in rows]
        assert {r[3] for r in rows} == {nvidia["driver"]}
        assert [g["pci_bus_id"].upper() for g in nvidia["gpus"]] == [r[4].upper() for r in rows]
