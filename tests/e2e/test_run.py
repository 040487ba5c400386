"""`envsnap run` end to end on the PyTorch root: the same training result as a chroot of
the original root under runc, crun and podman; the run flags; exit codes and signals;
the layer cache and gc; bad input (125/127) with nothing left mounted; ports; a TTY;
the copy fallback; and a registry reference pulled first."""

import json
import os
import pty
import select
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import engines
from engines import dockerd  # noqa: F401  (module-scoped fixture)
from conftest import ENVSNAP_BIN, base_env, envsnap, shared_schemas, text
from registry_fixtures import Client, Registry, free_port

# The quick start's training script: fixed seed, 50 steps, one thread.
TRAIN_PY = (Path(__file__).resolve().parents[2] / "examples" / "train.py").read_text(encoding="utf-8")

REF = "torch-run:v1"


def mounts():
    return set(Path("/proc/mounts").read_text().splitlines())


@pytest.fixture(scope="module")
def snap(torch_root, tmp_path_factory):
    store = tmp_path_factory.mktemp("run-store")
    envsnap("capture", torch_root, "-t", REF, "--store", store, "--quiet", timeout=900)
    return store


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("work")
    (d / "train.py").write_text(TRAIN_PY, encoding="utf-8")
    os.chmod(d, 0o755)
    return d


def run_env(store, extra=None):
    env = {"ENVSNAP_STORE": str(store)}
    env.update(extra or {})
    return env


def erun(store, *args, env=None, timeout=600):
    """envsnap run ARGS with the module's store; never fails by itself."""
    return envsnap("run", *args, env=run_env(store, env), check=False, timeout=timeout)


@pytest.fixture(scope="module")
def chroot_loss(torch_root, workdir):
    """The training in a chroot of the original root (a private mount namespace binds
    the script's directory and /proc, so the cached root is not changed)."""
    script = (f"mount --bind {workdir} {torch_root}/mnt && mount -t proc proc {torch_root}/proc && "
              f"exec chroot {torch_root} /usr/bin/python3 /mnt/train.py")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    assert proc.returncode == 0, text(proc.stderr)
    out = text(proc.stdout).strip()
    assert "on cpu: final loss " in out.splitlines()[-1], out
    return out


def layer_hexes(store, ref=REF):
    idx = json.loads((Path(store) / "index.json").read_bytes())
    for m in idx["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            man = json.loads((Path(store) / "blobs/sha256" / m["digest"].split(":")[1]).read_bytes())
            cfg = json.loads((Path(store) / "blobs/sha256" / man["config"]["digest"].split(":")[1]).read_bytes())
            return {d.split(":")[1] for d in cfg["rootfs"]["diff_ids"]}
    raise AssertionError(f"{ref} not in {store}")


def cache_entries(store):
    d = Path(store) / ".envsnap/cache/unpacked"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def runs(store):
    d = Path(store) / ".envsnap/runs"
    return sorted(d.iterdir(), key=lambda p: p.stat().st_mtime) if d.is_dir() else []


# ---- the same result as the original root ------------------------------------------

@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_training_gives_the_chroot_loss(snap, workdir, chroot_loss, runtime):
    before = mounts()
    proc = erun(snap, "--rm", "--runtime", runtime, "-v", f"{workdir}:/work", REF, "--", "python3",
                "/work/train.py")
    assert proc.returncode == 0, text(proc.stderr)
    assert text(proc.stdout).strip() == chroot_loss
    assert mounts() == before
    # Every layer was unpacked once, and --rm left the cache holding only them.
    assert cache_entries(snap) == layer_hexes(snap)
    last = runs(snap)[-1]
    assert sorted(p.name for p in last.iterdir()) == ["output.log", "record.json"]
    record = json.loads((last / "record.json").read_text())
    assert record["exit_code"] == 0 and record["runtime"] == runtime and record["status"] == "exited"
    assert record["command"] == ["python3", "/work/train.py"]
    assert chroot_loss in (last / "output.log").read_text()


def test_training_under_podman(snap, workdir, chroot_loss, tmp_path_factory):
    engine = engines.Podman(tmp_path_factory.mktemp("podman") / "storage", driver="overlay")
    try:
        env = engine.env()
        env["ENVSNAP_STORE"] = str(snap)
        proc = subprocess.run([str(ENVSNAP_BIN), "run", "--rm", "--runtime", "podman", "-v", f"{workdir}:/work",
                               REF, "--", "python3", "/work/train.py"],
                              env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=900, cwd="/")
        assert proc.returncode == 0, text(proc.stderr)
        assert text(proc.stdout).strip() == chroot_loss
        # podman passes exit codes through as well.
        proc = subprocess.run([str(ENVSNAP_BIN), "run", "--rm", "--runtime", "podman", REF, "--", "sh", "-c",
                               "exit 3"], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300, cwd="/")
        assert proc.returncode == 3, text(proc.stderr)
    finally:
        engine.stop()


# ---- flags ------------------------------------------------------------------------

def test_bundle_config_is_valid_and_kept_without_rm(snap, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    proc = erun(snap, "-v", f"{data}:/data:ro", "-e", "A=1", "--shm-size", "256m", "--ulimit", "nofile=1024:2048",
                REF, "--", "true")
    assert proc.returncode == 0, text(proc.stderr)
    last = runs(snap)[-1]
    config = last / "bundle" / "config.json"
    schemas = shared_schemas()
    check = subprocess.run(["/usr/bin/python3", str(schemas / "validate.py"),
                            str(schemas / "oci-runtime" / "config-schema.json"), str(config)],
                           capture_output=True, timeout=120)
    assert check.returncode == 0, text(check.stdout + check.stderr)
    doc = json.loads(config.read_text())
    assert doc["process"]["args"][:3] == ["/dev/init", "-g", "--"] and doc["process"]["args"][3:] == ["true"]
    assert "A=1" in doc["process"]["env"]
    shm = [m for m in doc["mounts"] if m["destination"] == "/dev/shm"][0]
    assert f"size={256 << 20}" in shm["options"]
    vol = [m for m in doc["mounts"] if m["destination"] == "/data"][0]
    assert vol["source"] == str(data) and "ro" in vol["options"]
    assert {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048} in doc["process"]["rlimits"]
    init = [m for m in doc["mounts"] if m["destination"] == "/dev/init"][0]
    assert "ro" in init["options"]
    # Kept without --rm: the writable layer holds what the run wrote.
    assert (last / "upper").is_dir() and (last / "bundle").is_dir()
    subprocess.run(["rm", "-rf", str(last)], check=True)


def test_env_workdir_user_and_read_only_volume(snap, tmp_path):
    ro = tmp_path / "ro"
    rw = tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    os.chmod(rw, 0o777)
    (ro / "input.txt").write_text("data\n")
    env_file = tmp_path / "vars.env"
    env_file.write_text("# training settings\nFROM_FILE=yes\nOVERRIDDEN=file\n\n")
    script = ("id -u; id -g; pwd; echo $FROM_FILE $OVERRIDDEN $FROM_SHELL; cat /ro/input.txt; "
              "touch /ro/new 2>/dev/null && echo ro-writable || echo ro-refused; "
              "echo ckpt > /rw/ckpt.pt && echo rw-ok")
    proc = erun(snap, "--rm", "-v", f"{ro}:/ro:ro", "-v", f"{rw}:/rw", "--env-file", env_file,
                "-e", "OVERRIDDEN=flag", "-e", "FROM_SHELL", "-w", "/rw", "-u", "1234:4321", REF, "--", "sh", "-c",
                script, env={"FROM_SHELL": "passed"})
    assert proc.returncode == 0, text(proc.stderr)
    assert text(proc.stdout).splitlines() == ["1234", "4321", "/rw", "yes flag passed", "data", "ro-refused", "rw-ok"]
    assert not (ro / "new").exists()
    st = (rw / "ckpt.pt").stat()
    assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_user_by_name_from_the_image(snap):
    proc = erun(snap, "--rm", "-u", "nobody", REF, "--", "sh", "-c", "id -un; id -u")
    assert proc.returncode == 0, text(proc.stderr)
    assert text(proc.stdout).split() == ["nobody", "65534"]
    proc = erun(snap, "--rm", "-u", "no-such-user", REF, "--", "true")
    assert proc.returncode == 125
    assert "no user \"no-such-user\"" in text(proc.stderr)


def test_snapshot_environment_then_e_on_top(snap):
    proc = erun(snap, "--rm", "-e", "PATH=/custom:/usr/bin:/bin", REF, "--", "sh", "-c",
                "echo $PATH; echo $NVIDIA_DRIVER_CAPABILITIES")
    assert proc.returncode == 0, text(proc.stderr)
    lines = text(proc.stdout).splitlines()
    assert lines[0] == "/custom:/usr/bin:/bin"
    assert lines[1] == "compute,utility"


@pytest.mark.parametrize("command,code", [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137)])
def test_exit_codes(snap, command, code):
    proc = erun(snap, "--rm", REF, "--", "sh", "-c", command)
    assert proc.returncode == code, text(proc.stderr)


def test_sigterm_stops_the_command_within_seconds(snap):
    before = {p.name for p in runs(snap)}
    p = subprocess.Popen([str(ENVSNAP_BIN), "run", "--rm", REF, "--", "python3", "-c",
                          "import time; time.sleep(600)"],
                         env=base_env(run_env(snap)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd="/")
    try:
        deadline = time.monotonic() + 120
        pid_file = None
        while time.monotonic() < deadline and pid_file is None:
            for r in runs(snap):
                if r.name not in before and (r / "container.pid").is_file():
                    pid_file = r / "container.pid"
            time.sleep(0.1)
        assert pid_file is not None, "the container did not start"
        container_pid = int(pid_file.read_text())
        time.sleep(1.0)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=20)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rc == 143, text(p.stderr.read())
    assert took < 5.0, f"took {took:.1f} s"
    assert not Path(f"/proc/{container_pid}").exists()


def test_tty(snap):
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["ENVSNAP_STORE"] = str(snap)
        os.execv(str(ENVSNAP_BIN), ["envsnap", "run", "--rm", "-it", REF, "--", "sh", "-c",
                                    "test -t 0 && test -t 1 && echo both-tty; tty"])
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 1.0)
        if not r:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    lines = out.decode(errors="replace").split("\r\n")
    assert lines[0] == "both-tty", out
    assert lines[1].startswith("/dev/pts/"), out
    # Without -t there is no terminal.
    proc = erun(snap, "--rm", REF, "--", "sh", "-c", "test -t 1 && echo tty || echo no-tty")
    assert text(proc.stdout).strip() == "no-tty"


def test_publish_port_with_a_private_network(snap):
    port = free_port()
    p = subprocess.Popen([str(ENVSNAP_BIN), "run", "--rm", "-p", f"127.0.0.1:{port}:8000", REF, "--",
                          "python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/etc"],
                         env=base_env(run_env(snap)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd="/")
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and body is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/os-release", timeout=2).read()
            except OSError:
                time.sleep(0.2)
        assert body is not None, "nothing answered on the published port"
        assert b"bookworm" in body
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
    assert rc == 143
    # The container's own loopback is private: the host port was the proxy's.
    proc = erun(snap, "--rm", "-p", f"127.0.0.1:{port}:8000", REF, "--", "sh", "-c",
                "cat /proc/net/dev | grep -c :")
    assert text(proc.stdout).strip() == "1", text(proc.stdout)  # lo only


def test_default_network_is_the_hosts(snap):
    host_ifaces = sum(1 for l in Path("/proc/net/dev").read_text().splitlines() if ":" in l)
    proc = erun(snap, "--rm", REF, "--", "sh", "-c", "cat /proc/net/dev | grep -c :")
    assert int(text(proc.stdout).strip()) == host_ifaces


def test_shm_is_large_by_default(snap):
    proc = erun(snap, "--rm", REF, "--", "sh", "-c", "df -k /dev/shm | tail -1")
    assert proc.returncode == 0, text(proc.stderr)
    kib = int(text(proc.stdout).split()[1])
    mem_kib = int([l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")][0].split()[1])
    assert kib >= mem_kib // 2 - 1024, (kib, mem_kib)
    proc = erun(snap, "--rm", "--shm-size", "96m", REF, "--", "sh", "-c", "df -k /dev/shm | tail -1")
    assert int(text(proc.stdout).split()[1]) == 96 * 1024


def test_copy_fallback_without_overlayfs(snap):
    before = mounts()
    proc = erun(snap, "--rm", REF, "--", "sh", "-c", "echo copied > /etc/marker; cat /etc/marker",
                env={"ENVSNAP_ROOTFS": "copy"})
    assert proc.returncode == 0, text(proc.stderr)
    assert text(proc.stdout).strip() == "copied"
    assert "uses a copy of the image" in text(proc.stderr)
    assert mounts() == before
    assert sorted(p.name for p in runs(snap)[-1].iterdir()) == ["output.log", "record.json"]


def test_writable_layer_is_per_run(snap):
    proc = erun(snap, "--rm", REF, "--", "sh", "-c", "echo x > /etc/only-this-run")
    assert proc.returncode == 0
    proc = erun(snap, "--rm", REF, "--", "sh", "-c", "test -e /etc/only-this-run && echo seen || echo fresh")
    assert text(proc.stdout).strip() == "fresh"


# ---- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("args,code,words", [
    (["no-such-snapshot:v9", "--", "true"], 125, "no image"),
    (["-v", "/definitely/not/here:/data", REF, "--", "true"], 125, "/definitely/not/here"),
    (["-v", "data", REF, "--", "true"], 125, "-v data"),
    (["-v", "/tmp:relative", REF, "--", "true"], 125, "DST must be an absolute path"),
    (["-p", "80:http", REF, "--", "true"], 125, "-p 80:http"),
    (["-p", "1.2.3.4:5:6:7", REF, "--", "true"], 125, "-p 1.2.3.4:5:6:7"),
    (["--shm-size", "lots", REF, "--", "true"], 125, "--shm-size lots"),
    (["--ulimit", "files=3", REF, "--", "true"], 125, "unknown limit"),
    (["--runtime", "lxc", REF, "--", "true"], 125, "--runtime lxc"),
    ([REF, "--", "no-such-command-here"], 127, "no-such-command-here"),
    ([REF, "--", "/etc/passwd"], 126, "/etc/passwd"),
])
def test_bad_input(snap, args, code, words):
    before = mounts()
    proc = erun(snap, "--rm", *args)
    assert proc.returncode == code, text(proc.stderr)
    assert words in text(proc.stderr), text(proc.stderr)
    assert mounts() == before


def test_no_usable_runtime(snap, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    before = mounts()
    proc = erun(snap, "--rm", REF, "--", "true", env={"PATH": str(empty)})
    assert proc.returncode == 125
    assert "no usable OCI runtime" in text(proc.stderr)
    assert mounts() == before


def test_runtime_failure_is_125_and_leaves_nothing_mounted(snap, tmp_path):
    # A runtime that fails before the container starts.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "runc").write_text("#!/bin/sh\necho 'fake runc: cannot start' >&2\nexit 1\n")
    os.chmod(fake / "runc", 0o755)
    before = mounts()
    proc = erun(snap, "--rm", "--runtime", "runc", REF, "--", "true",
                env={"PATH": f"{fake}:/usr/bin:/bin:/usr/sbin:/sbin"})
    assert proc.returncode == 125
    assert "fake runc: cannot start" in text(proc.stderr)
    assert "runc could not start the container" in text(proc.stderr)
    assert mounts() == before


# ---- the cache and gc -----------------------------------------------------------------

def test_gc_removes_unpacked_layers_no_snapshot_uses(snap, tmp_path):
    root = tmp_path / "small"
    engines.make_small_root(root)
    envsnap("capture", root, "-t", "small-run:v1", "--store", snap, "--quiet")
    proc = erun(snap, "--rm", "small-run:v1", "--", "cat", "/srv/hello.txt")
    assert proc.returncode == 0, text(proc.stderr)
    assert proc.stdout == engines.HELLO
    small = layer_hexes(snap, "small-run:v1")
    torch = layer_hexes(snap)
    assert small | torch <= cache_entries(snap)
    envsnap("rm", "small-run:v1", "--store", snap)
    envsnap("gc", "--store", snap)
    left = cache_entries(snap)
    assert torch <= left
    assert not (small - torch) & left
    assert left == torch


def test_registry_reference_is_pulled_first(tmp_path):
    root = tmp_path / "small"
    engines.make_small_root(root)
    store = tmp_path / "store"
    client = Client(tmp_path / "client")
    client.run("capture", root, "-t", "hello:v1", "--store", store, "--quiet")
    registry = Registry(tmp_path / "registry")
    try:
        client.run("push", "hello:v1", f"{registry.host}/team/hello:v1", "--store", store, "--quiet")
        fresh = tmp_path / "fresh-store"
        proc = client.run("run", "--rm", f"{registry.host}/team/hello:v1", "--store", fresh, "--",
                          "cat", "/srv/hello.txt", check=False)
        assert proc.returncode == 0, text(proc.stderr)
        assert proc.stdout == engines.HELLO
        listed = text(client.run("ls", "--store", fresh).stdout)
        assert "team/hello:v1" in listed
        # An unreachable registry is the run's own failure.
        proc = client.run("run", "--rm", f"127.0.0.1:{free_port()}/team/hello:v1", "--store", fresh, "--", "true",
                          check=False)
        assert proc.returncode == 125
        assert "cannot pull" in text(proc.stderr)
    finally:
        registry.stop()


# ---- GPU injection on a fake driver root ------------------------------------------------

GPU_SCRIPT = r'''
import ctypes, os, stat, subprocess
for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia-uvm"):
    if os.path.exists(p):
        st = os.stat(p)
        print("node", p, "c" if stat.S_ISCHR(st.st_mode) else "?", os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        print("node", p, "absent")
print("env", os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("NVIDIA_VISIBLE_DEVICES"))
cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
for name in ("libcuda.so.1", "libnvidia-ml.so.1"):
    print("cache", name, sorted(l.split("=> ")[1] for l in cache.splitlines() if l.strip().startswith(name + " ")))
nvml = ctypes.CDLL("libnvidia-ml.so.1")
assert nvml.nvmlInit_v2() == 0
buf = ctypes.create_string_buffer(96)
assert nvml.nvmlSystemGetDriverVersion(buf, 96) == 0
print("nvml", buf.value.decode())
try:
    open("/usr/local/nvidia/lib64/libcuda.so.535.104.05", "ab")
    print("driver file writable")
except OSError as e:
    print("driver file", e.strerror)
print("smi", subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout.strip())
'''


@pytest.fixture(scope="module")
def driver_root(tmp_path_factory):
    """test_cdi's fake driver root, its libnvidia-ml replaced by the fake NVML (which
    answers 535.104.05) so the container can load and call it through its soname."""
    from conftest import FAKE_NVML
    from test_cdi import VERSION, make_driver_root
    assert FAKE_NVML.is_file(), f"{FAKE_NVML} is not built"
    root = make_driver_root(tmp_path_factory.mktemp("driver") / "root", "/usr/local/nvidia/lib64")
    lib = root / f"usr/local/nvidia/lib64/libnvidia-ml.so.{VERSION}"
    lib.write_bytes(FAKE_NVML.read_bytes())
    subprocess.run(["ldconfig", "-r", str(root)], check=True)
    return root


def test_gpus_all_injects_nodes_libraries_and_sonames(snap, driver_root):
    before = mounts()
    proc = erun(snap, "--rm", "--gpus", "all", "--driver-root", driver_root, REF, "--", "python3", "-c", GPU_SCRIPT)
    assert proc.returncode == 0, text(proc.stderr)
    lines = text(proc.stdout).splitlines()
    assert lines == [
        "node /dev/nvidiactl c 195 255",
        "node /dev/nvidia0 c 195 0",
        "node /dev/nvidia1 c 195 1",
        "node /dev/nvidia-uvm c 511 0",
        "env 0,1 0,1",
        "cache libcuda.so.1 ['/usr/local/nvidia/lib64/libcuda.so.1']",
        "cache libnvidia-ml.so.1 ['/usr/local/nvidia/lib64/libnvidia-ml.so.1']",
        "nvml 535.104.05",
        "driver file Read-only file system",
        "smi fake nvidia-smi 0,1",
    ], text(proc.stderr)
    assert mounts() == before


def test_gpus_device_selects_one_gpu(snap, driver_root):
    proc = erun(snap, "--rm", "--gpus", "device=1", "--driver-root", driver_root, REF, "--", "python3", "-c",
                GPU_SCRIPT)
    assert proc.returncode == 0, text(proc.stderr)
    lines = text(proc.stdout).splitlines()
    assert "node /dev/nvidia0 absent" in lines and "node /dev/nvidia1 c 195 1" in lines
    assert "env 0 1" in lines  # CUDA numbers the one visible GPU 0; the host calls it 1
    proc = erun(snap, "--rm", "--gpus", "device=7", "--driver-root", driver_root, REF, "--", "true")
    assert proc.returncode == 125
    assert "device=7" in text(proc.stderr)


def test_gpu_bundle_mounts_exactly_the_driver_read_only(snap, driver_root, tmp_path):
    from test_cdi import CONTROL_NODES, GPU_NODES, LIBRARIES, VERSION
    proc = erun(snap, "--print-config", "--gpus", "all", "--driver-root", driver_root, REF, "--", "true")
    assert proc.returncode == 0, text(proc.stderr)
    config = json.loads(proc.stdout)
    path = tmp_path / "config.json"
    path.write_bytes(proc.stdout)
    schemas = shared_schemas()
    check = subprocess.run(["/usr/bin/python3", str(schemas / "validate.py"),
                            str(schemas / "oci-runtime" / "config-schema.json"), str(path)], capture_output=True)
    assert check.returncode == 0, text(check.stdout + check.stderr)
    real = os.path.realpath(driver_root)
    lib = "/usr/local/nvidia/lib64"
    expected = {f"/lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin": f"/lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin",
                "/usr/bin/nvidia-smi": "/usr/bin/nvidia-smi"}
    for stem, soname in LIBRARIES.items():
        expected[f"{lib}/{stem}.so.{VERSION}"] = f"{lib}/{stem}.so.{VERSION}"
        expected[f"{lib}/{soname}"] = f"{lib}/{stem}.so.{VERSION}"
    driver_mounts = {m["destination"]: m for m in config["mounts"] if m["source"].startswith(real)}
    assert set(driver_mounts) == set(expected)
    for dst, m in driver_mounts.items():
        assert m["source"] == real + expected[dst]
        assert "ro" in m["options"] and "rw" not in m["options"], m
    nodes = {(d["path"], d["major"], d["minor"]) for d in config["linux"]["devices"]}
    assert nodes == {(p, ma, mi) for p, ma, mi, _ in CONTROL_NODES + GPU_NODES}
    allowed = {(r["major"], r["minor"]) for r in config["linux"]["resources"]["devices"] if r["allow"]}
    assert allowed == {(ma, mi) for _, ma, mi, _ in CONTROL_NODES + GPU_NODES}
    hook = config["hooks"]["createContainer"][0]
    assert hook["args"][:3] == ["ldconfig", "-X", "-r"] and hook["args"][4:] == [lib]


def test_gpus_without_a_driver_is_125(snap, tmp_path):
    empty = tmp_path / "no-driver"
    empty.mkdir()
    proc = erun(snap, "--rm", "--gpus", "all", "--driver-root", empty, REF, "--", "true")
    assert proc.returncode == 125
    assert "no NVIDIA driver" in text(proc.stderr) and "--gpus none" in text(proc.stderr)
    # auto (the default) runs without GPUs when there is no driver.
    proc = erun(snap, "--rm", "--driver-root", empty, REF, "--", "sh", "-c", "ls /dev | grep -c nvidia || true")
    assert proc.returncode == 0 and text(proc.stdout).strip() == "0"


def test_snapshot_needing_a_newer_driver_is_refused_unless_forced(snap, driver_root, tmp_path):
    root = tmp_path / "cuda13"
    engines.make_small_root(root)
    cuda = root / "usr/local/cuda-13.0"
    cuda.mkdir(parents=True)
    (cuda / "version.json").write_text(json.dumps({"cuda": {"name": "CUDA SDK", "version": "13.0.96"}}))
    os.symlink("cuda-13.0", root / "usr/local/cuda")
    envsnap("capture", root, "-t", "cuda13:v1", "--store", snap, "--quiet")
    before = mounts()
    proc = erun(snap, "--rm", "--gpus", "all", "--driver-root", driver_root, "cuda13:v1", "--", "true")
    assert proc.returncode == 125
    err = text(proc.stderr)
    assert "CUDA 13.0" in err and "580" in err and "535.104.05" in err and "--force" in err, err
    assert mounts() == before
    proc = erun(snap, "--rm", "--force", "--gpus", "all", "--driver-root", driver_root, "cuda13:v1", "--",
                "cat", "/srv/hello.txt")
    assert proc.returncode == 0, text(proc.stderr)
    assert proc.stdout == engines.HELLO
    assert "warning (--force)" in text(proc.stderr)
    envsnap("rm", "cuda13:v1", "--store", snap)


def test_docker_runtime(tmp_path, dockerd):
    root = tmp_path / "small"
    engines.make_small_root(root)
    store = tmp_path / "store"
    envsnap("capture", root, "-t", "small-docker:v1", "--store", store, "--quiet")
    env = dockerd.env()
    env.update({"ENVSNAP_STORE": str(store), "DOCKER_HOST": dockerd.host,
                "PATH": "/usr/bin:/usr/sbin:/bin:/sbin"})  # Debian's docker client, matching its daemon
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("mounted\n")
    for _ in range(2):  # the second run finds the image already loaded
        proc = subprocess.run([str(ENVSNAP_BIN), "run", "--rm", "--runtime", "docker", "-v", f"{data}:/data:ro",
                               "-e", "GREETING=hi", "small-docker:v1", "--", "sh", "-c",
                               "cat /srv/hello.txt /data/in.txt; echo $GREETING; exit 3"],
                              env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300, cwd="/")
        assert proc.returncode == 3, text(proc.stderr)
        assert proc.stdout == engines.HELLO + b"mounted\nhi\n"
    images = dockerd.docker("images", "-q").stdout
    assert len(images.split()) == 1


# ---- review findings: docker's semantics and the supervisor's robustness ----------------

def test_words_after_the_command_are_the_commands(snap):
    proc = erun(snap, "--rm", REF, "echo", "-q", "hello", "-e", "X=1")
    assert proc.returncode == 0, text(proc.stderr)
    assert text(proc.stdout) == "-q hello -e X=1\n"
    proc = erun(snap, "--rm", "--entrypoint", "/bin/echo", REF, "a", "-v", "b")
    assert text(proc.stdout) == "a -v b\n"
    proc = erun(snap, "--rm", "--no-such-flag", REF, "--", "true")
    assert proc.returncode == 125


def test_user_semantics_follow_docker(snap):
    proc = erun(snap, "--rm", "-u", "4242", REF, "--", "sh", "-c", "id -u; id -g; echo $HOME")
    assert text(proc.stdout).split() == ["4242", "0", "/"]  # unknown uid: group 0, as docker
    proc = erun(snap, "--rm", "-u", "nobody", REF, "--", "sh", "-c", "echo $HOME")
    assert text(proc.stdout).strip() == "/nonexistent"  # the passwd entry's home


def test_tty_needs_a_terminal(snap):
    proc = erun(snap, "--rm", "-t", REF, "--", "true")
    assert proc.returncode == 125
    assert "-t needs a terminal" in text(proc.stderr)


def test_a_reader_going_away_does_not_kill_the_supervisor(snap):
    before = {p.name for p in runs(snap)}
    proc = subprocess.run(f"'{ENVSNAP_BIN}' run --rm {REF} -- sh -c 'yes | head -c 2000000; exit 5' | head -c 10",
                          shell=True, env=base_env(run_env(snap)), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=300, executable="/bin/bash")
    assert proc.stdout == b"y\ny\ny\ny\ny\n"
    new = [r for r in runs(snap) if r.name not in before]
    assert len(new) == 1
    record = json.loads((new[0] / "record.json").read_text())
    assert record["exit_code"] == 5 and record["status"] == "exited"
    assert sorted(p.name for p in new[0].iterdir()) == ["output.log", "record.json"]
    assert (new[0] / "output.log").stat().st_size == 2000000


def test_layer_cache_is_root_only_and_sys_is_a_fresh_read_only_sysfs(snap):
    assert (Path(snap) / ".envsnap/cache/unpacked").stat().st_mode & 0o777 == 0o700
    proc = erun(snap, "--rm", REF, "--", "sh", "-c", "grep ' /sys ' /proc/mounts")
    fields = text(proc.stdout).split()
    assert fields[0] == "sysfs" and fields[2] == "sysfs" and "ro" in fields[3].split(","), fields


def test_overlay_refused_falls_back_to_a_copy(tmp_path):
    """A store on an overlay file system cannot hold an overlay's upper layer: the run
    must say so and fall back to a copy by itself (no ENVSNAP_ROOTFS)."""
    root = tmp_path / "small"
    engines.make_small_root(root)
    base = tmp_path / "ovl"
    for d in ("lower", "upper", "work", "merged"):
        (base / d).mkdir(parents=True)
    script = (f"set -e; mount -t overlay overlay -o lowerdir={base}/lower,upperdir={base}/upper,"
              f"workdir={base}/work {base}/merged; "
              f"'{ENVSNAP_BIN}' capture {root} -t small:v1 --store {base}/merged/store --quiet >/dev/null; "
              f"'{ENVSNAP_BIN}' run --rm --store {base}/merged/store small:v1 -- cat /srv/hello.txt")
    before = mounts()
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          env=base_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    assert proc.returncode == 0, text(proc.stderr)
    assert proc.stdout == engines.HELLO
    assert "overlayfs is not available here" in text(proc.stderr), text(proc.stderr)
    assert "uses a copy of the image" in text(proc.stderr)
    assert mounts() == before
