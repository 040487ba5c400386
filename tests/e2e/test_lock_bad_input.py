"""Capture of a root full of bad input (truncated dpkg status, garbage METADATA, a
FIFO and a directory where files belong, broken and looping symlinks, a file name that
is not UTF-8): it finishes, exits 0, warns about each problem naming its path, and
writes a valid lock. Bad arguments exit 2 naming the path."""

import os
import time

import pytest

from conftest import (capture_proc, envsnap, lock_warnings, parse_lock_bytes,
                      stderr_warnings, text)

SITE = "/usr/lib/python3/dist-packages"

DPKG_STATUS = """\
Package: base-files
Status: install ok installed
Priority: required
Version: 12.4+deb12u15
Architecture: amd64
Description: Debian base system miscellaneous files

Package: zlib1g
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime

Package: truncated-pkg
Status: install ok inst"""

GARBAGE = bytes([0x00, 0xFF, 0xFE, 0x80, 0x1B]) + b"\x00Name\x00: \xc3\x28" * 40 + bytes(range(256))

# In-root paths each of which must be named by a warning (as in the lock's text).
PROBLEMS = {
    "broken symlink": "/etc/os-release",
    "symlink loop": "/usr/local/cuda",
    "truncated status": "/var/lib/dpkg/status",
    "garbage METADATA": SITE + "/garbage-1.0.dist-info",
    "FIFO METADATA": SITE + "/fifo-1.0.dist-info",
    "directory METADATA": SITE + "/dirmeta-1.0.dist-info",
    "symlink loop dist-info": SITE + "/loop-1.0.dist-info",
    "non-UTF-8 name": SITE + "/bad\\xff-1.0.dist-info",
}


def metadata(name, version):
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "root"
    for d in ("etc", "var/lib/dpkg", "usr/bin", "usr/lib/python3.11", "usr/local", SITE[1:]):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.symlink("missing-os-release", root / "etc/os-release")
    (root / "var/lib/dpkg/status").write_text(DPKG_STATUS, encoding="utf-8")
    (root / "usr/bin/python3.11").write_bytes(b"")
    os.symlink("python3.11", root / "usr/bin/python3")
    (root / "usr/lib/python3.11/os.py").write_bytes(b"")
    os.symlink("cuda-loop", root / "usr/local/cuda")
    os.symlink("cuda", root / "usr/local/cuda-loop")

    site = root / SITE[1:]
    (site / "good-2.0.dist-info").mkdir()
    (site / "good-2.0.dist-info/METADATA").write_bytes(metadata("good", "2.0"))
    (site / "garbage-1.0.dist-info").mkdir()
    (site / "garbage-1.0.dist-info/METADATA").write_bytes(GARBAGE)
    (site / "fifo-1.0.dist-info").mkdir()
    os.mkfifo(site / "fifo-1.0.dist-info/METADATA")
    (site / "dirmeta-1.0.dist-info/METADATA").mkdir(parents=True)
    os.symlink("loop-1.0.dist-info", site / "loop-1.0.dist-info")
    os.mkdir(os.fsencode(site) + b"/bad\xff-1.0.dist-info")
    ok = os.fsencode(site) + b"/ok\xfe-3.0.dist-info"
    os.mkdir(ok)
    with open(ok + b"/METADATA", "wb") as f:
        f.write(metadata("oknonutf8", "3.0"))
    return root


@pytest.fixture(scope="module")
def captured(bad_root):
    start = time.monotonic()
    lock, proc = capture_proc(bad_root, timeout=60)
    return lock, proc, time.monotonic() - start


def test_capture_finishes_quickly(captured):
    assert captured[2] < 10, f"capture of the bad root took {captured[2]:.1f} s"


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_each_problem_is_warned_about(captured, problem):
    lock, proc, _ = captured
    path = PROBLEMS[problem]
    assert [w for w in lock_warnings(lock) if path in w], \
        f"no warning names {path} ({problem}): {lock_warnings(lock)}"
    assert [w for w in stderr_warnings(proc) if path in w], \
        f"no stderr warning names {path} ({problem}):\n{text(proc.stderr)}"


def test_stderr_and_lock_carry_the_same_warnings(captured):
    lock, proc, _ = captured
    assert sorted(stderr_warnings(proc)) == sorted(lock_warnings(lock))
    assert not [w for w in lock_warnings(lock) if "good-2.0" in w]


def test_good_facts_survive(captured):
    lock, _, _ = captured
    dpkg = lock["lock"]["system"]["packages"]["dpkg"]
    assert dpkg == [
        {"name": "base-files", "version": "12.4+deb12u15", "arch": "amd64"},
        {"name": "zlib1g", "version": "1:1.2.13.dfsg-1", "arch": "amd64"},
    ]
    assert "os" not in lock["lock"]["system"]
    dists = {(d["name"], d["version"])
             for env in lock["lock"]["python"]["environments"] for d in env["distributions"]}
    # A distribution whose metadata cannot be read is still there: it is listed from its
    # directory name (and warned about, above); the loop leads nowhere and is left out.
    assert dists == {("good", "2.0"), ("oknonutf8", "3.0"), ("garbage", "1.0"), ("fifo", "1.0"),
                     ("dirmeta", "1.0"), ("bad\\xff", "1.0")}
    assert lock["lock"].get("cuda", {}).get("toolkits", []) == []


def test_missing_root_exits_2(tmp_path):
    missing = tmp_path / "no-such-root"
    proc = envsnap("capture", missing, "--lock-only", check=False)
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = text(proc.stderr)
    assert err.startswith("envsnap: error: ")
    assert str(missing) in err


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_bad_env_file_exits_2(bad_root, tmp_path, kind):
    env_file = tmp_path / "no-such.env"
    if kind == "directory":
        env_file = tmp_path / "a-directory.env"
        env_file.mkdir()
    proc = envsnap("capture", bad_root, "--lock-only", "--env-file", env_file, check=False)
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = text(proc.stderr)
    assert err.startswith("envsnap: error: ")
    assert str(env_file) in err


@pytest.mark.parametrize("content", [None, b"{not json", b'{"hello": 1}', b"\xff\xfe\x00"])
def test_show_bad_file_exits_2(tmp_path, content):
    path = tmp_path / "bad.lock.json"
    if content is not None:
        path.write_bytes(content)
    proc = envsnap("show", path, check=False)
    assert proc.returncode == 2, text(proc.stdout)
    err = text(proc.stderr)
    assert err.startswith("envsnap: error: ")
    assert str(path) in err


def test_diff_missing_file_exits_2(captured, tmp_path):
    lock_file = tmp_path / "good.lock.json"
    lock_file.write_bytes(captured[1].stdout)
    parse_lock_bytes(lock_file.read_bytes())
    missing = tmp_path / "missing.lock.json"
    for args in ((lock_file, missing), (missing, lock_file)):
        proc = envsnap("diff", *args, check=False)
        assert proc.returncode == 2
        assert str(missing) in text(proc.stderr)
