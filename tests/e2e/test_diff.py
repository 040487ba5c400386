"""`envsnap diff` between two overlays of the PyTorch root (the cached root itself is
never written): B differs from A in numpy's version, bash's dpkg version and one data
file, and nothing else."""

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import envsnap, merkle_digest, parse_lock_bytes, sha256_hex, text

SITE = "/usr/lib/python3/dist-packages"
NUMPY_PKG_INFO = SITE.lstrip("/") + "/numpy-1.24.2.egg-info/PKG-INFO"
DATA_FILES = {
    "a.txt": b"alpha\n",
    "sub/b.bin": bytes(range(256)) * 16,
    "sub/c.txt": b"gamma\n",
}


def run(*cmd):
    subprocess.run([str(c) for c in cmd], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)


def write_data(root):
    for rel, data in DATA_FILES.items():
        path = root / "srv/data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def bump_dpkg_version(root, package):
    """Appends '+e2e1' to `package`'s Version in the root's dpkg status; returns
    (old, new)."""
    status = root / "var/lib/dpkg/status"
    stanzas = status.read_text(encoding="utf-8").split("\n\n")
    for i, stanza in enumerate(stanzas):
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.M):
            old = re.search(r"^Version: (.+)$", stanza, re.M).group(1)
            new = old + "+e2e1"
            stanzas[i] = re.sub(r"^Version: .+$", f"Version: {new}", stanza, count=1, flags=re.M)
            status.write_text("\n\n".join(stanzas), encoding="utf-8")
            return old, new
    raise AssertionError(f"{package} not in {status}")


@pytest.fixture(scope="module")
def roots(torch_root):
    """Two overlays A and B of the PyTorch root, upper layers on a tmpfs; yields
    (A, B, facts about what B changed)."""
    # A short path in /tmp: overlay options must not contain ',' or ':'.
    base = Path(tempfile.mkdtemp(prefix="envsnap-e2e-ovl-"))
    assert not re.search(r"[,:\\]", str(torch_root) + str(base)), "path unusable in overlay options"
    mounted = []
    try:
        layers = base / "layers"
        layers.mkdir()
        run("mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", layers)
        mounted.append(layers)
        out = []
        for name in ("A", "B"):
            upper, work, merged = layers / f"{name}-upper", layers / f"{name}-work", base / name
            upper.mkdir()
            work.mkdir()
            merged.mkdir()
            run("mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={torch_root},upperdir={upper},workdir={work}", merged)
            mounted.append(merged)
            write_data(merged)
            out.append(merged)
        a, b = out

        pkg_info = b / NUMPY_PKG_INFO
        content = pkg_info.read_text(encoding="utf-8")
        assert re.search(r"^Version: 1\.24\.2$", content, re.M)
        pkg_info.write_text(re.sub(r"^Version: 1\.24\.2$", "Version: 1.24.3", content,
                                   count=1, flags=re.M), encoding="utf-8")
        bash_old, bash_new = bump_dpkg_version(b, "bash")
        (b / "srv/data/sub/c.txt").write_bytes(b"GAMMA\n")

        bash_arch = subprocess.run(["dpkg-query", f"--admindir={a}/var/lib/dpkg", "-W", "-f",
                                    "${Architecture}", "bash"], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, check=True, timeout=60).stdout.decode()
        yield a, b, {"bash": (bash_old, bash_new), "bash_arch": bash_arch,
                     "data": (merkle_digest(a / "srv/data"), merkle_digest(b / "srv/data"))}
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", str(path)], stdin=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_overlay_b_really_differs(roots):
    """The changes are visible to the root's own tools (independent of envsnap)."""
    a, b, facts = roots
    out = subprocess.run(["chroot", str(b), "/usr/bin/python3", "-I", "-c",
                          "import importlib.metadata as m; print(m.version('numpy'))"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=True,
                         cwd="/", timeout=60).stdout.decode().strip()
    assert out == "1.24.3"
    out = subprocess.run(["dpkg-query", f"--admindir={b}/var/lib/dpkg", "-W", "-f",
                          "${Version}", "bash"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, check=True, timeout=60).stdout.decode()
    assert out == facts["bash"][1]
    assert facts["data"][0][0] != facts["data"][1][0]
    assert (a / NUMPY_PKG_INFO).read_text().count("Version: 1.24.2") == 1


def expected_changes(facts):
    (old_hash, _, _), (new_hash, _, _) = facts["data"]
    return [
        {"rank": 2, "category": "numeric", "section": "python", "name": "numpy", "where": SITE,
         "change": "changed", "old": "1.24.2", "new": "1.24.3"},
        {"rank": 4, "category": "system", "section": "dpkg", "name": "bash", "where": facts["bash_arch"],
         "change": "changed", "old": facts["bash"][0], "new": facts["bash"][1]},
        {"rank": 6, "category": "data", "section": "data", "name": "/srv/data",
         "where": "", "change": "changed",
         "old": "sha256:" + old_hash, "new": "sha256:" + new_hash},
    ]


@pytest.fixture(scope="module")
def root_diff(roots):
    a, b, _ = roots
    proc = envsnap("diff", a, b, "--json", "--data", "/srv/data", check=False)
    assert proc.returncode == 1, text(proc.stderr)
    return json.loads(proc.stdout.decode("utf-8"))


def test_diff_roots_json(roots, root_diff):
    assert root_diff == {"equal": False, "changes": expected_changes(roots[2])}


def test_diff_changes_are_sorted(root_diff):
    keys = [(c["rank"], c["section"], c["name"]) for c in root_diff["changes"]]
    assert keys == sorted(keys)


def test_diff_same_root_is_equal(roots):
    a, _, _ = roots
    proc = envsnap("diff", a, a, "--json", "--data", "/srv/data", check=False)
    assert proc.returncode == 0, text(proc.stderr)
    assert json.loads(proc.stdout.decode("utf-8")) == {"equal": True, "changes": []}
    proc = envsnap("diff", a, a, check=False)
    assert proc.returncode == 0, text(proc.stderr)


def test_diff_lock_files_equals_diff_roots(roots, root_diff, tmp_path):
    a, b, facts = roots
    locks = []
    for root, (digest, files, size) in ((a, facts["data"][0]), (b, facts["data"][1])):
        out = tmp_path / f"{root.name}.lock.json"
        envsnap("capture", root, "--lock-only", "--data", root / "srv/data", "-o", out)
        lock = parse_lock_bytes(out.read_bytes())
        assert lock["lock"]["data"] == [{"path": "/srv/data", "role": "data", "files": files,
                                         "bytes": size, "digest": "sha256:" + digest}]
        locks.append(out)
    proc = envsnap("diff", *locks, "--json", check=False)
    assert proc.returncode == 1, text(proc.stderr)
    assert json.loads(proc.stdout.decode("utf-8")) == root_diff
    proc = envsnap("diff", locks[0], locks[0], "--json", check=False)
    assert proc.returncode == 0, text(proc.stderr)
    assert json.loads(proc.stdout.decode("utf-8")) == {"equal": True, "changes": []}


def test_diff_human_output(roots):
    a, b, facts = roots
    proc = envsnap("diff", a, b, "--data", "/srv/data", check=False)
    assert proc.returncode == 1, text(proc.stderr)
    lines = text(proc.stdout).splitlines()
    change_lines = [line for line in lines if re.match(r"^\s+\[[1-6] [a-z]+\] ", line)]
    assert len(change_lines) == 3, lines
    assert change_lines[0] == f"  [2 numeric] python numpy ({SITE}): 1.24.2 -> 1.24.3"
    old, new = facts["bash"]
    assert change_lines[1].startswith("  [4 system] dpkg bash")
    assert change_lines[1].endswith(f": {old} -> {new}")
    assert change_lines[2].startswith("  [6 data] data /srv/data")
    assert " -> " in change_lines[2]


def test_data_and_weights_entries(tmp_path):
    """--data DIR and --weights FILE inside ROOT: in-root paths, sorted by path, with the
    Merkle digest of the directory and the plain SHA-256 of the file."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=\"12\"\n")
    write_data(root)
    weights = root / "models/best.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"\x80\x02weights" * 1000)
    out = tmp_path / "lock.json"
    envsnap("capture", root, "--lock-only", "--weights", weights, "--data", root / "srv/data",
            "-o", out)
    lock = parse_lock_bytes(out.read_bytes())
    digest, files, size = merkle_digest(root / "srv/data")
    assert files == 3 and size == sum(len(d) for d in DATA_FILES.values())
    assert lock["lock"]["data"] == [
        {"path": "/models/best.pt", "role": "weights", "files": 1,
         "bytes": len(weights.read_bytes()), "digest": "sha256:" + sha256_hex(weights.read_bytes())},
        {"path": "/srv/data", "role": "data", "files": files, "bytes": size,
         "digest": "sha256:" + digest},
    ]
