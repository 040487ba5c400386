"""`envsnap cdi` against a fake NVIDIA driver root built here: device nodes made with
mknod, driver libraries with versioned sonames built by gcc, an ld.so.cache written by
the real `ldconfig -r`, nvidia-smi and GSP firmware. The spec must list exactly what the
root holds, validate against the CDI schema (shared/schemas/cdi), and be accepted by
Debian's podman 4.3, which runs a container with the devices and files it names.

Needs root (mknod, rootful podman), gcc, ldconfig, python3-yaml and podman."""

import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

import engines
from conftest import envsnap, run, shared_schemas, text
from engines import podman  # noqa: F401  (module-scoped fixture)

VERSION = "535.104.05"
UVM_MAJOR = 511
CAPS_MAJOR = 237
# The libraries of the fake driver: file stem -> soname.
LIBRARIES = {
    "libcuda": "libcuda.so.1",
    "libnvidia-ml": "libnvidia-ml.so.1",
    "libnvidia-ptxjitcompiler": "libnvidia-ptxjitcompiler.so.1",
}
FILE_OPTIONS = ["ro", "nosuid", "nodev", "bind"]
NVIDIA_SMI = b"#!/bin/sh\necho fake nvidia-smi $NVIDIA_VISIBLE_DEVICES\n"
# (path, major, minor, mode): the control nodes in the order the spec lists them.
CONTROL_NODES = [
    ("/dev/nvidiactl", 195, 255, 0o666),
    ("/dev/nvidia-uvm", UVM_MAJOR, 0, 0o666),
    ("/dev/nvidia-caps/nvidia-cap1", CAPS_MAJOR, 1, 0o400),
    ("/dev/infiniband/uverbs0", 231, 192, 0o666),
]
GPU_NODES = [("/dev/nvidia0", 195, 0, 0o666), ("/dev/nvidia1", 195, 1, 0o666)]


def mknod(root, path, major, minor, mode):
    p = Path(root) / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(p, 0o600 | 0o020000, os.makedev(major, minor))
    except PermissionError:
        pytest.fail(f"mknod {p}: permission denied (the CDI tests create device nodes: run them as root)")
    os.chmod(p, mode)


def build_library(path, soname, work):
    path.parent.mkdir(parents=True, exist_ok=True)
    src = Path(work) / "lib.c"
    src.write_text("int envsnap_test_symbol(void) { return 1; }\n", encoding="utf-8")
    run("gcc", "-shared", "-fPIC", "-o", path, f"-Wl,-soname,{soname}", src)
    src.unlink()


def make_driver_root(root, libdir, with_nodes=True):
    """A driver root with its libraries in `libdir` (root-relative, listed in
    etc/ld.so.conf) and the cache that `ldconfig -r` writes for it."""
    root = Path(root)
    root.mkdir(parents=True)
    lib = root / libdir.lstrip("/")
    for stem, soname in LIBRARIES.items():
        build_library(lib / f"{stem}.so.{VERSION}", soname, root.parent)
    (root / "etc").mkdir()
    (root / "etc/ld.so.conf").write_text(libdir + "\n", encoding="utf-8")
    run("ldconfig", "-r", root)
    smi = root / "usr/bin/nvidia-smi"
    smi.parent.mkdir(parents=True)
    smi.write_bytes(NVIDIA_SMI)
    smi.chmod(0o755)
    fw = root / f"lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin"
    fw.parent.mkdir(parents=True)
    fw.write_bytes(b"firmware")
    if with_nodes:
        for path, major, minor, mode in CONTROL_NODES + GPU_NODES:
            mknod(root, path, major, minor, mode)
    return root


def node(root, path, major, minor, mode):
    return {"path": path, "hostPath": str(root) + path, "type": "c", "major": major, "minor": minor,
            "fileMode": mode, "uid": 0, "gid": 0}


def mount(root, container, in_root=None):
    return {"containerPath": container, "hostPath": str(root) + (in_root or container),
            "options": FILE_OPTIONS, "type": "bind"}


def expected_spec(root, libdir):
    root = os.path.realpath(root)
    mounts = [mount(root, f"/lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin"), mount(root, "/usr/bin/nvidia-smi")]
    for stem, soname in LIBRARIES.items():
        real = f"{libdir}/{stem}.so.{VERSION}"
        mounts += [mount(root, real), mount(root, f"{libdir}/{soname}", real)]
    gpus = [node(root, *n) for n in GPU_NODES]
    return {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [{"name": "0", "containerEdits": {"deviceNodes": [gpus[0]]}},
                    {"name": "1", "containerEdits": {"deviceNodes": [gpus[1]]}},
                    {"name": "all", "containerEdits": {"deviceNodes": gpus}}],
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [node(root, *n) for n in CONTROL_NODES],
            "mounts": sorted(mounts, key=lambda m: m["containerPath"]),
        },
    }


def validate_cdi(path):
    schemas = shared_schemas()
    proc = subprocess.run(["/usr/bin/python3", str(schemas / "validate.py"), str(schemas / "cdi" / "schema.json"),
                           str(path)], stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert proc.returncode == 0, f"{path}: {proc.stdout.decode()} {proc.stderr.decode()}"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cdi")


@pytest.mark.parametrize("libdir", ["/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu"])
def test_spec_lists_exactly_the_driver_root(work, libdir):
    root = make_driver_root(work / ("root" + libdir.replace("/", "-")), libdir)
    out = work / f"spec{libdir.replace('/', '-')}.json"
    proc = envsnap("cdi", "--driver-root", root, "-o", out)
    assert proc.stdout == b""
    assert text(proc.stderr) == ""
    assert sorted(os.listdir(work)).count(out.name + ".tmp-envsnap") == 0
    spec = json.loads(out.read_bytes())
    assert spec == expected_spec(root, libdir)
    validate_cdi(out)
    # Without -o the same spec goes to stdout.
    assert json.loads(envsnap("cdi", "--driver-root", root).stdout) == spec


def test_yaml_is_the_same_document_and_validates(work):
    root = make_driver_root(work / "root-yaml", "/usr/local/nvidia/lib64")
    as_json = json.loads(envsnap("cdi", "--driver-root", root).stdout)
    out = work / "spec.yaml"
    envsnap("cdi", "--driver-root", root, "--format", "yaml", "-o", out)
    assert yaml.safe_load(out.read_text(encoding="utf-8")) == as_json
    validate_cdi(out)


def test_no_driver_is_exit_2_naming_the_root(work):
    empty = work / "empty-root"
    (empty / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    proc = envsnap("cdi", "--driver-root", empty, check=False)
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = text(proc.stderr)
    assert err.startswith(f"envsnap: error: no NVIDIA driver found under {os.path.realpath(empty)} "
                          f"(looked for libcuda.so.<version> in {os.path.realpath(empty)}/etc/ld.so.cache "
                          "and in /usr/lib/x86_64-linux-gnu, "), err


def test_driver_without_device_nodes_is_exit_2(work):
    root = make_driver_root(work / "root-no-nodes", "/usr/local/nvidia/lib64", with_nodes=False)
    out = work / "never-written.json"
    proc = envsnap("cdi", "--driver-root", root, "-o", out, check=False)
    assert proc.returncode == 2
    assert text(proc.stderr).startswith(
        f"envsnap: error: no GPU device nodes (/dev/nvidia<N>) under {os.path.realpath(root)}: ")
    assert not out.exists()


def test_bad_format_is_a_usage_error(work):
    proc = envsnap("cdi", "--format", "toml", check=False)
    assert proc.returncode == 2


# ---- podman ----------------------------------------------------------------------------

CDI_DIR = Path("/etc/cdi")  # podman 4.3 has no cdi_spec_dirs setting: /etc/cdi or /var/run/cdi only


@pytest.fixture(scope="module")
def podman_setup(work):
    """A driver root, a busybox root to run, and a unique CDI kind, so that a spec of the
    host (say a real nvidia.com/gpu one in /var/run/cdi) never collides with ours."""
    root = make_driver_root(work / "root-podman", "/usr/local/nvidia/lib64")
    small = work / "small-root"
    engines.make_small_root(small)
    kind = f"envsnap-test-{uuid.uuid4().hex[:12]}.example/gpu"
    return root, small, kind


def run_with_spec(podman, spec_bytes, suffix, small, device, script):
    """Places the spec in /etc/cdi under a unique name, runs `script` in a container of
    `small` with `--device device`, and removes the spec (and /etc/cdi if it made it)."""
    made_dir = not CDI_DIR.exists()
    CDI_DIR.mkdir(parents=True, exist_ok=True)
    spec_path = CDI_DIR / f"envsnap-test-{uuid.uuid4().hex}{suffix}"
    try:
        spec_path.write_bytes(spec_bytes)
        # --rootfs is a switch: the first argument is then the root directory, not an image.
        return podman.podman("run", "--rm", "--network", "none", "--device", device, "--rootfs", small,
                             "/bin/busybox", "sh", "-c", script, check=False, timeout=180)
    finally:
        spec_path.unlink(missing_ok=True)
        if made_dir:
            try:
                CDI_DIR.rmdir()
            except OSError:
                pass


SCRIPT = (
    "for n in /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-caps/nvidia-cap1 /dev/infiniband/uverbs0 "
    "/dev/nvidia0 /dev/nvidia1; do "
    "  if [ -e $n ]; then busybox stat -c 'node %n %F %t:%T %a' $n; else echo \"absent $n\"; fi; done; "
    "busybox sha256sum " + " ".join(f"/usr/local/nvidia/lib64/{s}.so.{VERSION} /usr/local/nvidia/lib64/{n}"
                                    for s, n in LIBRARIES.items()) + "; "
    f"busybox sha256sum /lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin; "
    "/usr/bin/nvidia-smi; "
    "busybox grep ' /usr/local/nvidia/lib64/libcuda.so.1 ' /proc/self/mountinfo | busybox cut -d' ' -f5,6"
)


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def expected_output(root, gpus):
    lines = []
    for path, major, minor, mode in CONTROL_NODES + GPU_NODES:
        if path.startswith("/dev/nvidia") and path[len("/dev/nvidia"):].isdigit() and minor not in gpus:
            lines.append(f"absent {path}")
            continue
        lines.append(f"node {path} character special file {major:x}:{minor:x} {mode:o}")
    lib = root / "usr/local/nvidia/lib64"
    for stem, soname in LIBRARIES.items():
        digest = sha(lib / f"{stem}.so.{VERSION}")
        lines.append(f"{digest}  /usr/local/nvidia/lib64/{stem}.so.{VERSION}")
        lines.append(f"{digest}  /usr/local/nvidia/lib64/{soname}")
    fw = f"/lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin"
    lines.append(f"{sha(str(root) + fw)}  {fw}")
    lines.append("fake nvidia-smi void")
    return lines


@pytest.mark.parametrize("fmt,device,gpus", [("json", "all", [0, 1]), ("yaml", "0", [0]), ("json", "1", [1])])
def test_podman_runs_a_container_with_the_spec(podman, podman_setup, fmt, device, gpus):  # noqa: F811
    root, small, kind = podman_setup
    spec_bytes = envsnap("cdi", "--driver-root", root, "--format", fmt).stdout
    spec_bytes = spec_bytes.replace(b'"nvidia.com/gpu"', json.dumps(kind).encode())
    assert kind.encode() in spec_bytes
    proc = run_with_spec(podman, spec_bytes, "." + fmt, small, f"{kind}={device}", SCRIPT)
    out = text(proc.stdout).splitlines()
    assert proc.returncode == 0, f"podman exited {proc.returncode}:\n{text(proc.stdout)}\n{text(proc.stderr)}"
    assert out[:-1] == expected_output(root, gpus), text(proc.stderr)
    # The library is mounted read-only, nosuid and nodev, as the spec asks.
    mount_point, options = out[-1].split(" ")
    assert mount_point == "/usr/local/nvidia/lib64/libcuda.so.1"
    assert {"ro", "nosuid", "nodev"} <= set(options.split(",")), options


def test_podman_rejects_an_unknown_device_of_the_spec(podman, podman_setup):  # noqa: F811
    """The control: podman really reads the spec, so a name it does not define fails."""
    root, small, kind = podman_setup
    spec_bytes = envsnap("cdi", "--driver-root", root).stdout.replace(b'"nvidia.com/gpu"', json.dumps(kind).encode())
    proc = run_with_spec(podman, spec_bytes, ".json", small, f"{kind}=7", "true")
    assert proc.returncode != 0
    assert f"{kind}=7" in text(proc.stderr), text(proc.stderr)
