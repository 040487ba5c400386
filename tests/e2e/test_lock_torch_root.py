"""`envsnap capture ROOT --lock-only` and `show` on the Debian 12 PyTorch root, each
fact checked against an independent reading of the same root (dpkg-query, the root's
own Python, the files themselves)."""

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import (all_distributions, canonical, capture, capture_proc, envsnap,
                      parse_lock_bytes, parse_os_release, sha256_hex, text)

SITE = "/usr/lib/python3/dist-packages"

ELF_MACHINES = {3: "i686", 62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv64",
                21: "ppc64le", 22: "s390x"}


@pytest.fixture(scope="module")
def captured(torch_root):
    """(lock, process) of one capture of the PyTorch root."""
    return capture_proc(torch_root)


@pytest.fixture(scope="module")
def lock(captured):
    return captured[0]


@pytest.fixture(scope="module")
def root_python(torch_root):
    """What the root's own interpreter says: version and every distribution with the
    directory it was read from."""
    script = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps({'python': '%d.%d' % sys.version_info[:2],\n"
        "  'dists': [[d.metadata['Name'], d.version, str(d._path)] for d in m.distributions()]}))\n"
    )
    proc = subprocess.run(["chroot", str(torch_root), "/usr/bin/python3", "-I", "-c", script],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd="/", timeout=120, check=True)
    return json.loads(proc.stdout)


def test_lock_is_schema_valid_and_digest_is_canonical(lock):
    # capture_proc already validated the schema and the digest against the bytes; the
    # digest is also recomputed here from the parsed document alone.
    assert lock["lockVersion"] == 1
    body = canonical(lock["lock"]).encode("utf-8")
    assert lock["digest"] == "sha256:" + hashlib.sha256(body).hexdigest()


def test_captured_records_the_root(lock, torch_root):
    assert lock["captured"]["root"] == str(torch_root)
    assert "host" not in lock["lock"]["system"]


def test_dpkg_packages_equal_dpkg_query(lock, torch_root):
    out = subprocess.run(
        ["dpkg-query", f"--admindir={torch_root}/var/lib/dpkg", "-W",
         "-f", "${Status}\t${Package}\t${Version}\t${Architecture}\n"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=True, timeout=60).stdout
    expected = set()
    for line in out.decode("utf-8").splitlines():
        status, name, version, arch = line.split("\t")
        if status == "install ok installed":
            expected.add((name, version, arch))
    assert len(expected) > 50
    packages = lock["lock"]["system"]["packages"]["dpkg"]
    got = [(p["name"], p["version"], p.get("arch")) for p in packages]
    assert len(got) == len(set(got)), "duplicate dpkg entries"
    assert set(got) == expected
    assert got == sorted(got, key=lambda t: (t[0].encode(), t[1].encode())), \
        "dpkg packages not sorted by name, then version"
    assert "apk" not in lock["lock"]["system"]["packages"] or \
        lock["lock"]["system"]["packages"]["apk"] == []


def test_python_distributions_equal_importlib_metadata(lock, root_python):
    expected = {(name, version) for name, version, _ in root_python["dists"]}
    assert ("numpy", "1.24.2") in expected and ("torch", "1.13.0a0+gitunknown") in expected
    got = [(d["name"], d["version"]) for _, d in all_distributions(lock)]
    assert set(got) == expected
    assert len(got) == len(set(got)), "a distribution is listed twice"


def test_python_environments(lock, root_python):
    envs = lock["lock"]["python"]["environments"]
    paths = [e["path"] for e in envs]
    assert paths == sorted(paths, key=str.encode), "environments not sorted by path"
    assert len(paths) == len(set(paths))
    site = [e for e in envs if e["path"] == SITE]
    assert len(site) == 1
    assert site[0]["kind"] == "system"
    assert site[0]["python"] == root_python["python"]
    for env in envs:
        keys = [(d["name"].encode(), d["version"].encode()) for d in env["distributions"]]
        assert keys == sorted(keys), f"distributions of {env['path']} not sorted"


def test_distribution_details(lock, root_python, torch_root):
    """installer and record_digest against the files of each distribution."""
    in_lock = {(path, d["name"]): d for path, d in all_distributions(lock)}
    checked = 0
    for name, version, where in root_python["dists"]:
        meta_dir = Path(str(torch_root) + where)
        env_path = str(Path(where).parent)
        entry = in_lock[(env_path, name)]
        assert entry["version"] == version
        record = meta_dir / "RECORD"
        if meta_dir.is_dir() and record.is_file():
            assert entry["record_digest"] == "sha256:" + sha256_hex(record.read_bytes()), name
        else:
            assert "record_digest" not in entry, name
        installer = meta_dir / "INSTALLER"
        if meta_dir.is_dir() and installer.is_file():
            assert entry["installer"] == installer.read_text().strip(), name
        elif where.endswith(".egg-info") and env_path == SITE:
            assert entry["installer"] == "debian", name
        checked += 1
    assert checked == len(root_python["dists"])


def test_torch_entry(lock, torch_root):
    version_py = (torch_root / "usr/lib/python3/dist-packages/torch/version.py").read_text()
    version = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", version_py, re.M).group(1)
    assert version == "1.13.0a0"
    entries = lock["lock"]["torch"]
    assert len(entries) == 1
    torch = entries[0]
    assert torch["path"] == SITE + "/torch"
    assert torch["version"] == version
    assert torch["build"] == "cpu"
    assert "cuda" not in torch
    assert torch["architectures"] == {"sass": [], "ptx": []}
    for library in torch.get("libraries", []):
        assert library["path"].startswith(SITE + "/torch/lib/")
        assert library["sass"] == [] and library["ptx"] == [], library["path"]


def test_os_arch_glibc(lock, torch_root):
    system = lock["lock"]["system"]
    release = parse_os_release(torch_root / "etc/os-release")
    assert system["os"]["id"] == "debian"
    assert system["os"]["version_id"] == "12"
    assert system["os"] == {"id": release["ID"], "version_id": release["VERSION_ID"],
                            "version_codename": release["VERSION_CODENAME"],
                            "pretty_name": release["PRETTY_NAME"]}
    libc = next(torch_root.glob("usr/lib/*-linux-gnu/libc.so.6"))
    header = libc.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    assert system["arch"] == ELF_MACHINES[machine]
    libc6 = [p for p in system["packages"]["dpkg"] if p["name"] == "libc6"]
    assert len(libc6) == 1
    assert system["glibc"] == libc6[0]["version"].split(":")[-1].split("-")[0]


def test_no_driver_cuda_project_data_env(lock, torch_root):
    driver_libs = [p for pattern in ("usr/lib/*/libnvidia-ml.so*", "usr/lib/*/libcuda.so*")
                   for p in torch_root.glob(pattern)]
    assert driver_libs == []
    assert lock["lock"]["nvidia"] == {"source": "none"}
    cuda = lock["lock"].get("cuda", {})
    assert all(cuda.get(k, []) == [] for k in ("toolkits", "cudnn", "nccl", "tensorrt")), cuda
    for key in ("project", "data"):
        assert key not in lock["lock"]
    assert lock["lock"].get("env", {}) == {}


def test_two_captures_give_the_same_digest(lock, torch_root):
    again = capture(torch_root)
    assert again["digest"] == lock["digest"]
    assert again["lock"] == lock["lock"]


def test_output_file(lock, torch_root, tmp_path):
    out = tmp_path / "torch.lock.json"
    proc = envsnap("capture", torch_root, "--lock-only", "-o", out)
    assert proc.stdout == b""
    written = parse_lock_bytes(out.read_bytes())
    assert written["digest"] == lock["digest"]


def test_no_warnings_on_a_clean_root(captured):
    lock, proc = captured
    assert lock["captured"].get("warnings", []) == []
    assert "warning" not in text(proc.stderr)


@pytest.fixture(scope="module")
def lock_file(tmp_path_factory, captured):
    path = tmp_path_factory.mktemp("show") / "torch.lock.json"
    path.write_bytes(captured[1].stdout)
    return path


def test_show_summary(lock_file):
    proc = envsnap("show", lock_file)
    out = text(proc.stdout)
    assert "1.13.0a0" in out
    assert re.search(r"\bcpu\b", out)
    # GPU stack (torch among it) comes before the system section.
    assert out.index("1.13.0a0") < out.lower().index("debian")


def test_show_json_round_trips(lock_file):
    proc = envsnap("show", lock_file, "--json")
    shown = json.loads(proc.stdout.decode("utf-8"))
    assert shown == json.loads(lock_file.read_bytes().decode("utf-8"))
