#!/usr/bin/python3
"""Push and pull of the PyTorch fixture image through a real registry, envsnap against
`skopeo copy` on the same image in the same run; results go to BENCHMARKS.md.

Not run by CI. Usage (after building; needs docker-registry and skopeo):
    bench/bench_registry.py [--bin build/envsnap] [--root DIR] [--work DIR] [--no-write]

The fixture root (scripts/fixture-torch-root.sh) is captured into a temporary store,
then, one run each, wall time, page cache warm (the store is read once before timing):
  * push to an empty repository: envsnap and skopeo each get a registry of their own
    with empty storage, so neither finds (or mounts) the other's blobs;
  * pull into an empty store (envsnap) or an empty OCI layout (skopeo);
  * the second push of the unchanged image to the same repository (target for envsnap:
    at most 0.5 s).
The registries are Debian's docker-registry on 127.0.0.1 (plain HTTP, filesystem
storage in the work directory, access log off), started and stopped by PID. Both tools
run with a HOME, config and auth files of their own, and no proxy variables.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lock import SOURCE_DIR, cpu_model, fixture_root, write_section  # noqa: E402

BEGIN = "<!-- bench_registry:begin -->"
END = "<!-- bench_registry:end -->"
REGISTRY_BIN = "/usr/bin/docker-registry"
SECOND_PUSH_TARGET = 0.5
TAG = "bench/torch:v1"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """One docker-registry process on 127.0.0.1 with filesystem storage under `work`."""

    def __init__(self, work, env):
        self.work = Path(work)
        self.storage = self.work / "storage"
        self.storage.mkdir(parents=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = self.work / "config.yml"
        doc = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": "envsnap-bench-fixed-secret"},
        }
        config.write_text(json.dumps(doc, indent=2), encoding="utf-8")  # JSON is YAML
        self.log = self.work / "registry.log"
        renv = {k: v for k, v in env.items() if not k.startswith("REGISTRY_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=renv, cwd=str(self.work))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"docker-registry exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1.0):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"docker-registry did not answer GET /v2/ within 30 s: {self.log_tail()}")

    def log_tail(self, n=2000):
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self):
        """SIGTERM by PID, up to 10 s, then SIGKILL; always reaped."""
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def tool_env(home):
    """The caller's environment with a HOME and credential files of the benchmark's own."""
    home = Path(home)
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
           and not k.startswith("ENVSNAP_REGISTRY_") and k not in ("SSL_CERT_FILE", "CURL_CA_BUNDLE")}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
                "DOCKER_CONFIG": str(home / "docker"),
                "REGISTRY_AUTH_FILE": str(home / "containers-auth.json"),
                "ENVSNAP_AUTH_FILE": str(home / "auth.json")})
    return env


def timed(cmd, env):
    """(seconds, stdout) of one run of cmd; a failure ends the benchmark."""
    cmd = [os.fspath(c) for c in cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, cwd="/")
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
    print(f"{elapsed:8.2f} s  {' '.join(cmd)}", file=sys.stderr)
    return elapsed, proc.stdout.decode(errors="replace")


def du(path):
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, check=True).stdout.split()[0])


def warm(path):
    subprocess.run(f"tar -cf - -C {path} . > /dev/null", shell=True, check=True)


def store_digest(store, tag):
    index = json.loads((Path(store) / "index.json").read_text(encoding="utf-8"))
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m["digest"]
    raise RuntimeError(f"{tag} is not in {store}/index.json")


def run_benchmark(binary, root, work, env):
    """The table rows: (measure, envsnap seconds, skopeo seconds)."""
    store = work / "store"
    timed([binary, "capture", root, "-t", TAG, "--store", store, "--quiet"], env)
    blobs = du(store / "blobs")
    warm(store)
    skopeo = ["skopeo", "--insecure-policy", "copy", "--quiet"]
    reg_e = Registry(work / "registry-envsnap", env)
    reg_s = None
    try:
        reg_s = Registry(work / "registry-skopeo", env)
        dest_e = f"{reg_e.host}/bench/envsnap:v1"
        dest_s = f"docker://{reg_s.host}/bench/skopeo:v1"
        rows = []

        t_e, _ = timed([binary, "push", TAG, dest_e, "--store", store, "--quiet"], env)
        t_s, _ = timed([*skopeo, "--dest-tls-verify=false", f"oci:{store}:{TAG}", dest_s], env)
        rows.append(("push to an empty registry", t_e, t_s))

        pulled = work / "store-pulled"
        t_e, out = timed([binary, "pull", dest_e, "--store", pulled, "--quiet"], env)
        t_s, _ = timed([*skopeo, "--src-tls-verify=false", dest_s, f"oci:{work / 'skopeo-pulled'}:x"], env)
        rows.append(("pull into an empty store", t_e, t_s))
        digest = store_digest(store, TAG)
        if out.split() != ["bench/envsnap:v1", digest]:
            raise RuntimeError(f"pull printed {out.strip()!r}, pushed {digest}")
        shutil.rmtree(pulled)
        shutil.rmtree(work / "skopeo-pulled")

        t_e, _ = timed([binary, "push", TAG, dest_e, "--store", store, "--quiet"], env)
        t_s, _ = timed([*skopeo, "--dest-tls-verify=false", f"oci:{store}:{TAG}", dest_s], env)
        rows.append(("second push, image unchanged", t_e, t_s))
        return rows, blobs
    finally:
        reg_e.stop()
        if reg_s:
            reg_s.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("ENVSNAP_BIN", str(SOURCE_DIR / "build" / "envsnap")))
    ap.add_argument("--root", help="root to capture (default: scripts/fixture-torch-root.sh)")
    ap.add_argument("--work", default="/var/tmp", help="parent of the temporary work directory")
    ap.add_argument("--output", default=str(SOURCE_DIR / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    for tool in (REGISTRY_BIN, shutil.which("skopeo") or "skopeo"):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing (Debian packages docker-registry, skopeo)")
    binary = os.path.abspath(args.bin)
    root = args.root or fixture_root()

    work = Path(tempfile.mkdtemp(prefix="envsnap-bench-registry-", dir=args.work))
    try:
        env = tool_env(work / "home")
        rows, blobs = run_benchmark(binary, root, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = ["| measure | envsnap | skopeo copy | envsnap / skopeo |", "|---|---:|---:|---:|"]
    for name, t_e, t_s in rows:
        lines.append(f"| {name} | {t_e:.2f} s | {t_s:.2f} s | {t_e / t_s:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    second = rows[2][1]
    verdict = "met" if second <= SECOND_PUSH_TARGET else "NOT met"

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"## Push and pull through a registry (bench/bench_registry.py)\n\n"
               f"- date: {date}\n"
               f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, "
               f"kernel {platform.release()}\n"
               f"- image: the PyTorch fixture root (scripts/fixture-torch-root.sh) captured by envsnap, "
               f"{blobs / 2**20:.0f} MiB of blobs\n"
               f"- registry: Debian's docker-registry on 127.0.0.1, plain HTTP, filesystem storage, "
               f"one empty registry per tool; one run each, page cache warm\n\n"
               f"{table}\n"
               f"A ratio below 1 means envsnap took less time than skopeo. Target for the second "
               f"push: at most {SECOND_PUSH_TARGET} s ({verdict}: {second:.2f} s).\n")
    if not args.no_write:
        write_section(Path(args.output), section, BEGIN, END)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
