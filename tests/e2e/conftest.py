"""Shared helpers for the end-to-end tests of the envsnap binary.

ctest runs each test file from tests/e2e with ENVSNAP_BIN, ENVSNAP_BUILD_DIR and
ENVSNAP_SOURCE_DIR set; nothing here depends on where the checkout lives.
"""

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

SOURCE_DIR = Path(os.environ.get("ENVSNAP_SOURCE_DIR") or Path(__file__).resolve().parents[2])
BUILD_DIR = Path(os.environ.get("ENVSNAP_BUILD_DIR") or SOURCE_DIR / "build")
ENVSNAP_BIN = Path(os.environ.get("ENVSNAP_BIN") or BUILD_DIR / "envsnap")
SCHEMA_PATH = SOURCE_DIR / "docs" / "lock.schema.json"
FAKE_NVML = BUILD_DIR / "tests" / "fixtures" / "fake-nvml" / "libnvidia-ml.so.1"

WARNING_PREFIX = "envsnap: warning: "
ERROR_PREFIX = "envsnap: error: "

# Variables of the test runner that would change what a live capture records or how
# the binary behaves; each test sets what it needs explicitly.
_SCRUBBED_ENV = ("ENVSNAP_NVML_LIBRARY", "FAKE_NVML_HANG")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a real NVIDIA GPU and driver")
    # pytest creates --basetemp without its parents; ctest passes build/e2e-tmp/<file>.
    basetemp = config.getoption("basetemp", None)
    if basetemp:
        Path(basetemp).resolve().parent.mkdir(parents=True, exist_ok=True)


def pytest_terminal_summary(terminalreporter):
    # ctest shows only this output: say plainly when the GPU test could not run.
    for report in terminalreporter.stats.get("skipped", []):
        if "skipped: no GPU" in str(report.longrepr):
            terminalreporter.write_line("skipped: no GPU")


def base_env(extra=None):
    """The environment for a child: ours minus envsnap's switches, plus `extra`
    (a value of None removes that variable)."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def envsnap(*args, env=None, check=True, timeout=300):
    """Runs the envsnap binary with `args`; stdout/stderr are bytes.

    `env` is merged into the test's environment (see base_env). With check=True a
    non-zero exit fails the test and shows stderr."""
    if not ENVSNAP_BIN.is_file():
        pytest.fail(f"envsnap binary not found at {ENVSNAP_BIN} (set ENVSNAP_BIN)")
    cmd = [str(ENVSNAP_BIN), *[os.fspath(a) for a in args]]
    proc = subprocess.run(cmd, env=base_env(env), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, cwd="/")
    if check and proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}\nstderr:\n{text(proc.stderr)}")
    return proc


def text(data):
    """Bytes from the binary as text; bytes that are not UTF-8 become \\xNN, which is
    also how the lock writes them."""
    return data.decode("utf-8", errors="backslashreplace")


def _reject_float(token):
    raise AssertionError(f"the lock holds a floating point number ({token}); "
                         "docs/lock-format.md allows integers only")


def parse_lock_bytes(raw):
    """Parses a lock as written: strict UTF-8, no floating point, schema-valid, and the
    digest checked both ways (see check_digest)."""
    doc = json.loads(raw.decode("utf-8"), parse_float=_reject_float,
                     parse_constant=_reject_float)
    validate_lock(doc)
    check_digest(doc, raw)
    return doc


def canonical(value):
    """The canonical JSON form of docs/lock-format.md, as a str."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def check_digest(doc, raw=None):
    """digest == sha256(canonical(lock)); with the file's bytes, the file must hold
    exactly those canonical bytes between the top-level "lock": and the final '}'."""
    body = canonical(doc["lock"]).encode("utf-8")
    assert doc["digest"] == "sha256:" + sha256_hex(body)
    if raw is not None:
        end = raw.rstrip(b"\n")
        assert end.endswith(b'"lock":' + body + b"}"), (
            "the lock file does not hold the canonical form of \"lock\" as its last member")


_validator = None


def validate_lock(doc):
    """Validates `doc` against docs/lock.schema.json (Draft 2020-12)."""
    global _validator
    if _validator is None:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        _validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(_validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:20]]
        pytest.fail("lock does not match docs/lock.schema.json:\n" + "\n".join(lines))


def capture_proc(root, *args, env=None, timeout=300):
    """`envsnap capture ROOT --lock-only ARGS` to stdout: (parsed lock, process)."""
    proc = envsnap("capture", root, "--lock-only", *args, env=env, timeout=timeout)
    return parse_lock_bytes(proc.stdout), proc


def capture(root, *args, env=None, timeout=300):
    """`envsnap capture ROOT --lock-only ARGS` to stdout, parsed and validated."""
    return capture_proc(root, *args, env=env, timeout=timeout)[0]


def stderr_warnings(proc):
    """The messages of the `envsnap: warning: ` lines on stderr."""
    return [line[len(WARNING_PREFIX):] for line in text(proc.stderr).splitlines()
            if line.startswith(WARNING_PREFIX)]


def lock_warnings(doc):
    return doc["captured"].get("warnings", [])


def all_distributions(doc):
    """(environment path, distribution) for every distribution in the lock."""
    out = []
    for env in doc["lock"].get("python", {}).get("environments", []):
        for dist in env["distributions"]:
            out.append((env["path"], dist))
    return out


def merkle_digest(path):
    """Independent reading of the data digest of docs/lock-format.md: a file's leaf is
    sha256(contents); a directory's node is sha256 of its entries sorted by name
    (bytes), one line each `<type> <name> <hex digest>\\n` (type f, d or l; a symlink's
    digest is sha256 of its target). Returns (hex digest, regular files, bytes)."""
    path = os.fsencode(path)
    if os.path.islink(path):
        return sha256_hex(os.readlink(path)), 0, 0
    if not os.path.isdir(path):
        with open(path, "rb") as f:
            data = f.read()
        return sha256_hex(data), 1, len(data)
    lines, files, size = [], 0, 0
    for name in sorted(os.listdir(path)):
        child = os.path.join(path, name)
        if os.path.islink(child):
            kind = b"l"
        elif os.path.isdir(child):
            kind = b"d"
        else:
            kind = b"f"
        digest, n, b = merkle_digest(child)
        files += n
        size += b
        lines.append(kind + b" " + name + b" " + digest.encode() + b"\n")
    return sha256_hex(b"".join(lines)), files, size


def parse_os_release(path):
    """KEY=value pairs of an os-release file, quotes removed."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Z0-9_]+)=(.*)$", line.strip())
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            out[m.group(1)] = value
    return out


@pytest.fixture(scope="session")
def envsnap_bin():
    if not ENVSNAP_BIN.is_file():
        pytest.fail(f"envsnap binary not found at {ENVSNAP_BIN} (set ENVSNAP_BIN)")
    return ENVSNAP_BIN


@pytest.fixture(scope="session")
def torch_root(envsnap_bin):
    """The Debian 12 root with PyTorch (scripts/fixture-torch-root.sh; cached)."""
    script = SOURCE_DIR / "scripts" / "fixture-torch-root.sh"
    proc = subprocess.run([str(script)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"{script} exited {proc.returncode}:\n{text(proc.stderr)[-4000:]}")
    root = Path(proc.stdout.decode().strip().splitlines()[-1])
    assert (root / "usr/lib/python3/dist-packages/torch/version.py").is_file(), root
    return root


@pytest.fixture(scope="session")
def nvml_env():
    """Environment for a live capture that talks to the fake NVML when it is built,
    so a real driver's start-up time never enters a timing."""
    return {"ENVSNAP_NVML_LIBRARY": str(FAKE_NVML)} if FAKE_NVML.is_file() else {}


# ---- OCI images and the store -------------------------------------------------------

def shared_schemas():
    """The team's schema folder (../shared/schemas beside the checkout, or
    $ENVSNAP_SHARED_SCHEMAS); its absence is a failure, not a skip."""
    candidates = [os.environ.get("ENVSNAP_SHARED_SCHEMAS"), SOURCE_DIR.parent / "shared" / "schemas",
                  SOURCE_DIR.parent.parent / "shared" / "schemas"]
    for c in candidates:
        if c and (Path(c) / "validate.py").is_file():
            return Path(c)
    pytest.fail("the shared schemas (shared/schemas/validate.py beside the checkout) were not found; "
                "set ENVSNAP_SHARED_SCHEMAS")


def validate_oci(schema, doc, tmp_path):
    """Validates a JSON document (dict or bytes) against shared/schemas/oci-image/<schema>."""
    schemas = shared_schemas()
    path = tmp_path / f"doc-{sha256_hex(json.dumps(doc, sort_keys=True).encode() if not isinstance(doc, bytes) else doc)[:12]}.json"
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    proc = subprocess.run(["/usr/bin/python3", str(schemas / "validate.py"),
                           str(schemas / "oci-image" / schema), str(path)],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert proc.returncode == 0, f"{schema}: {proc.stdout.decode()} {proc.stderr.decode()}"


LABEL_LOCK = "dev.envsnap.lock"
LABEL_DIGEST = "dev.envsnap.lock.digest"


def check_lock_labels(labels, snap):
    """Image config labels carry the lock of `snap` (anything with .lock and .digest) and
    its digest."""
    assert labels, "the image has no labels"
    assert labels.get(LABEL_DIGEST) == snap.digest
    raw = labels.get(LABEL_LOCK)
    assert raw is not None, f"no {LABEL_LOCK} label"
    parsed = json.loads(raw)
    lock = parsed["lock"] if "lockVersion" in parsed and "lock" in parsed else parsed
    assert lock == snap.lock
    assert "sha256:" + sha256_hex(canonical(lock).encode("utf-8")) == snap.digest


class Layout:
    """Reads an OCI image layout (the envsnap store) independently of envsnap."""

    def __init__(self, path):
        self.path = Path(path)

    def index(self):
        return json.loads((self.path / "index.json").read_bytes())

    def blob_path(self, digest):
        algo, hexd = digest.split(":")
        return self.path / "blobs" / algo / hexd

    def blob(self, digest):
        data = self.blob_path(digest).read_bytes()
        assert "sha256:" + sha256_hex(data) == digest, f"blob {digest} does not match its digest"
        return data

    def manifest_descriptor(self, ref):
        found = [m for m in self.index()["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
        assert len(found) == 1, f"{ref}: {len(found)} entries in index.json"
        return found[0]

    def manifest(self, ref):
        return json.loads(self.blob(self.manifest_descriptor(ref)["digest"]))

    def config(self, ref):
        return json.loads(self.blob(self.manifest(ref)["config"]["digest"]))

    def layer_digests(self, ref):
        return {l["annotations"]["dev.envsnap.layer"]: l["digest"] for l in self.manifest(ref)["layers"]}


def tool(path):
    """A tool that scripts/setup.sh installs; missing means setup is broken."""
    p = Path(path)
    if not p.exists():
        pytest.fail(f"{path} is missing: scripts/setup.sh should have installed it")
    return str(p)


def run(*cmd, timeout=600, check=True, env=None, cwd=None):
    proc = subprocess.run([os.fspath(c) for c in cmd], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}:\n{proc.stdout.decode(errors='replace')[-2000:]}\n"
                    f"{proc.stderr.decode(errors='replace')[-4000:]}")
    return proc
