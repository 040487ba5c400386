"""Private container engines for the end-to-end tests: a dockerd of our own, podman with
its own storage and configuration, skopeo, and the small root the image tests capture.

Nothing here touches the host's engines: every daemon, socket, storage directory and
configuration file lives under directories the caller owns. Unix sockets, dockerd's
--exec-root and podman's --runroot go under a short directory in /tmp (see short_dir),
because a socket path longer than 107 bytes cannot be bound and a CI checkout may live
at a long path.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

DOCKERD = "/usr/sbin/dockerd"
# Debian's client, matching its daemon; another `docker` first on PATH may be newer.
DOCKER = "/usr/bin/docker"
PODMAN = "/usr/bin/podman"
SKOPEO = "/usr/bin/skopeo"
BUSYBOX = "/bin/busybox"

HELLO = b"hello from the envsnap e2e image\n"

_STATIC_FALLBACK_C = r"""
#include <stdio.h>
#include <string.h>
/* Stands in for busybox when busybox-static is not installed: the applets cat and echo. */
static int cat(int argc, char **argv) {
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) { perror(argv[i]); rc = 1; continue; }
        char buf[4096]; size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
        fclose(f);
    }
    return rc;
}
int main(int argc, char **argv) {
    const char *name = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    if (strcmp(name, "busybox") == 0 && argc > 1) { argv++; argc--; name = argv[0]; }
    if (strcmp(name, "cat") == 0) return cat(argc, argv);
    if (strcmp(name, "echo") == 0) {
        for (int i = 1; i < argc; i++) printf(i > 1 ? " %s" : "%s", argv[i]);
        putchar('\n');
        return 0;
    }
    fprintf(stderr, "%s: applet not found\n", name);
    return 127;
}
"""


def run_tool(cmd, env=None, timeout=180, check=True, input_file=None):
    """Runs `cmd` without stdin (or with `input_file` as stdin); stdout/stderr are bytes.
    With check=True a non-zero exit fails the test with the command's stderr."""
    cmd = [os.fspath(c) for c in cmd]
    stdin = open(input_file, "rb") if input_file else subprocess.DEVNULL
    try:
        proc = subprocess.run(cmd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, cwd="/")
    finally:
        if input_file:
            stdin.close()
    if check and proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}\nstdout:\n"
                    f"{proc.stdout.decode(errors='replace')[-3000:]}\nstderr:\n"
                    f"{proc.stderr.decode(errors='replace')[-3000:]}")
    return proc


def short_dir():
    """A fresh directory with a short path in /tmp for sockets and run state; the caller
    removes it (remove_tree)."""
    return Path(tempfile.mkdtemp(prefix="es-", dir="/tmp"))


def _mounts_under(paths):
    """Mount points at or below any of `paths`, deepest first (from /proc/self/mountinfo)."""
    prefixes = [os.path.realpath(p) for p in paths]
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_under(*paths):
    """Unmounts everything mounted at or below `paths` (lazily when busy)."""
    for point in _mounts_under(paths):
        if subprocess.run(["umount", point], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            subprocess.run(["umount", "-l", point], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def remove_tree(path):
    """Unmounts what is left below `path`, then removes it."""
    if path and os.path.lexists(path):
        unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid):
    """Whether `pid` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(errors="replace")
    except OSError:
        return False
    return "\nState:\tZ" not in status


def stop_pid(pid, grace=20.0, popen=None):
    """SIGTERM to `pid`, up to `grace` seconds to exit, then SIGKILL. `popen`, when the
    process is our child, is waited on (reaped)."""
    def gone(wait):
        if popen is not None:
            try:
                popen.wait(timeout=wait)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + wait
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if gone(0):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if gone(wait):
            return


class Dockerd:
    """A private dockerd: data under `data_root`, socket/exec-root/pidfile under a short
    /tmp directory. Use docker(...) to talk to it; stop() ends it and cleans up."""

    def __init__(self, data_root):
        for tool in (DOCKERD, DOCKER):
            if not os.access(tool, os.X_OK):
                pytest.fail(f"{tool} is missing (Debian package docker.io)")
        self.data_root = Path(data_root)
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.run_dir = short_dir()
        self.exec_root = self.run_dir / "e"
        self.socket = self.run_dir / "d.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = self.data_root.parent / (self.data_root.name + ".log")
        self.proc = None
        assert len(str(self.exec_root / "containerd/containerd-debug.sock.ttrpc")) < 100

    def env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("DOCKER_") and k != "CONTAINERD_ADDRESS"}
        # The client must not read a user's ~/.docker (contexts, credential helpers).
        env["DOCKER_CONFIG"] = str(self.run_dir / "client")
        return env

    def start(self, timeout=60.0):
        config = self.run_dir / "daemon.json"
        # Without this, dockerd 20.10 writes its trust key to /etc/docker/key.json.
        config.write_text(json.dumps({"deprecated-key-path": str(self.run_dir / "key.json")}),
                          encoding="utf-8")
        cmd = [DOCKERD, "--config-file", str(config), "--iptables=false", "--ip6tables=false",
               "--bridge=none", "--storage-driver=vfs",
               "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
               "--pidfile", str(self.run_dir / "pid"), "-H", self.host]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd="/",
                                         env=self.env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                pytest.fail(f"dockerd exited {self.proc.returncode} while starting:\n{tail}")
            probe = subprocess.run([DOCKER, "-H", self.host, "version"], env=self.env(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=30)
            if probe.returncode == 0:
                return self
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                pytest.fail(f"dockerd did not answer within {timeout:.0f} s:\n{tail}")
            time.sleep(0.5)

    def log_tail(self, lines=40):
        try:
            data = self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(data.splitlines()[-lines:])

    def docker(self, *args, check=True, timeout=180):
        return run_tool([DOCKER, "-H", self.host, *args], env=self.env(), check=check,
                        timeout=timeout)

    def stop(self):
        # containerd is dockerd's child; note its pid before dockerd goes.
        containerd_pid = None
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            containerd_pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pass
        if self.proc is not None:
            stop_pid(self.proc.pid, popen=self.proc)
        if containerd_pid:
            stop_pid(containerd_pid, grace=10)
        unmount_under(self.data_root, self.run_dir)
        remove_tree(self.run_dir)
        remove_tree(self.data_root)


class Podman:
    """podman with its own storage (`root`, vfs driver), a short --runroot/--tmpdir, and
    its own containers.conf, storage.conf, registries.conf and signature policy."""

    def __init__(self, root, driver="vfs"):
        if not os.access(PODMAN, os.X_OK):
            pytest.fail(f"{PODMAN} is missing (Debian package podman)")
        self.root = Path(root)
        self.driver = driver
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_dir = short_dir()
        self.runroot = self.run_dir / "r"
        self.tmpdir = self.run_dir / "t"
        self.big_tmp = self.root.parent / (self.root.name + "-tmp")
        self.big_tmp.mkdir(exist_ok=True)
        conf = self.run_dir / "conf"
        conf.mkdir()
        self.containers_conf = conf / "containers.conf"
        self.containers_conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.run_dir}/events.log"\n'
            f'tmp_dir = "{self.tmpdir}"\n', encoding="utf-8")
        self.storage_conf = conf / "storage.conf"
        self.storage_conf.write_text(
            "[storage]\n"
            f'driver = "{driver}"\n'
            f'graphroot = "{self.root}"\n'
            f'runroot = "{self.runroot}"\n', encoding="utf-8")
        self.registries_conf = conf / "registries.conf"
        self.registries_conf.write_text(
            "unqualified-search-registries = []\n", encoding="utf-8")
        self.policy = conf / "policy.json"
        self.policy.write_text(
            json.dumps({"default": [{"type": "insecureAcceptAnything"}]}), encoding="utf-8")

    def env(self):
        env = dict(os.environ)
        env.update({
            "CONTAINERS_CONF": str(self.containers_conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
            "TMPDIR": str(self.big_tmp),
        })
        env.pop("CONTAINER_HOST", None)
        env.pop("CONTAINER_CONNECTION", None)
        return env

    def podman(self, *args, check=True, timeout=180):
        cmd = [PODMAN, "--root", self.root, "--runroot", self.runroot,
               "--tmpdir", self.tmpdir, "--storage-driver", self.driver,
               "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args]
        return run_tool(cmd, env=self.env(), check=check, timeout=timeout)

    def stop(self):
        # Not `podman system reset`: it also removes networks from the host's config.
        unmount_under(self.root, self.run_dir)
        remove_tree(self.run_dir)
        remove_tree(self.root)
        remove_tree(self.big_tmp)


def skopeo(*args, tmpdir, check=True, timeout=180):
    """skopeo with no signature policy file and no registry configuration read from the
    host; `tmpdir` holds its temporary blobs."""
    if not os.access(SKOPEO, os.X_OK):
        pytest.fail(f"{SKOPEO} is missing (Debian package skopeo)")
    env = dict(os.environ)
    env["TMPDIR"] = str(tmpdir)
    empty = Path(tmpdir) / "registries.conf"
    if not empty.exists():
        empty.write_text("unqualified-search-registries = []\n", encoding="utf-8")
    env["CONTAINERS_REGISTRIES_CONF"] = str(empty)
    return run_tool([SKOPEO, "--insecure-policy", *args], env=env, check=check,
                    timeout=timeout)


def _is_static_elf(path):
    """Whether `path` is a 64-bit little-endian ELF without a program interpreter."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(int.from_bytes(table[i:i + 4], "little") != PT_INTERP
               for i in range(0, len(table), phentsize))


def _static_busybox(dest, work):
    """Copies the static busybox to `dest`; without busybox-static, compiles a static
    stand-in with the cat and echo applets."""
    if os.path.isfile(BUSYBOX) and _is_static_elf(BUSYBOX):
        shutil.copyfile(BUSYBOX, dest)
        os.chmod(dest, 0o755)
        return "busybox"
    src = Path(work) / "busybox-fallback.c"
    src.write_text(_STATIC_FALLBACK_C, encoding="utf-8")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.fail(f"neither {BUSYBOX} (busybox-static) nor a C compiler is available")
    run_tool([cc, "-static", "-Os", "-o", dest, src])
    src.unlink()
    return "fallback"


def make_small_root(root):
    """A tiny Debian-like root: a static /bin/busybox with sh, echo and cat links,
    /etc/os-release, one dpkg package and /srv/hello.txt holding HELLO."""
    root = Path(root)
    for d in ("bin", "etc", "srv", "tmp", "var/lib/dpkg", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    kind = _static_busybox(root / "bin/busybox", root.parent)
    for applet in ("sh", "echo", "cat"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
        'NAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\n'
        'VERSION="12 (bookworm)"\n'
        "VERSION_CODENAME=bookworm\n"
        "ID=debian\n", encoding="utf-8")
    (root / "var/lib/dpkg/status").write_text(
        "Package: busybox-static\n"
        "Status: install ok installed\n"
        "Priority: optional\n"
        "Section: shells\n"
        "Installed-Size: 2036\n"
        "Maintainer: Debian Install System Team <debian-boot@lists.debian.org>\n"
        "Architecture: amd64\n"
        "Source: busybox\n"
        "Version: 1:1.35.0-4+b3\n"
        "Description: Standalone rescue shell with tons of builtin utilities\n"
        "\n", encoding="utf-8")
    (root / "srv/hello.txt").write_bytes(HELLO)
    os.chmod(root / "tmp", 0o1777)
    return kind


# Module-scoped fixtures shared by the engine tests: one daemon per test file.
@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    daemon = Dockerd(tmp_path_factory.mktemp("dockerd") / "data")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    engine = Podman(tmp_path_factory.mktemp("podman") / "storage")
    try:
        yield engine
    finally:
        engine.stop()
