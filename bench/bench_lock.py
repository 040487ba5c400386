#!/usr/bin/python3
"""Times `envsnap capture ROOT --lock-only` on the PyTorch fixture root against what a
user would otherwise run inside that root, and records the result in BENCHMARKS.md.

Not run by CI. Usage (as root, after building):
    bench/bench_lock.py [--bin build/envsnap] [--root DIR] [-n 10] [--no-write]

Each command runs N times; the best (lowest) wall time is reported. The baselines run
the root's own interpreter under chroot:
  * importlib.metadata: the names of all distributions (what a lock's Python part needs)
  * torch.utils.collect_env: PyTorch's own environment report; Debian's copy may crash
    when pip is missing, and that is recorded as it happens.
"""

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parents[1]
BEGIN = "<!-- bench_lock:begin -->"
END = "<!-- bench_lock:end -->"


def best_of(cmd, n):
    """(best seconds, last exit code, last stderr line) of n runs of cmd."""
    best, rc, last = float("inf"), None, ""
    for _ in range(n):
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, cwd="/")
        best = min(best, time.perf_counter() - start)
        rc = proc.returncode
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        last = lines[-1] if lines else ""
    return best, rc, last


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            if m:
                return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fixture_root():
    out = subprocess.run([str(SOURCE_DIR / "scripts" / "fixture-torch-root.sh")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=True)
    return out.stdout.decode().strip().splitlines()[-1]


def write_section(path, section, begin=BEGIN, end=END):
    """Replaces the text between a benchmark's markers in `path`, or appends it."""
    block = f"{begin}\n{section}{end}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new, encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("ENVSNAP_BIN", str(SOURCE_DIR / "build" / "envsnap")))
    ap.add_argument("--root", help="root to capture (default: scripts/fixture-torch-root.sh)")
    ap.add_argument("-n", type=int, default=10, help="runs per command (best is kept)")
    ap.add_argument("--output", default=str(SOURCE_DIR / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()

    root = args.root or fixture_root()
    py = "/usr/bin/python3"
    cases = [
        ("envsnap capture --lock-only",
         [args.bin, "capture", root, "--lock-only", "-o", "/dev/null"]),
        ("importlib.metadata names (chroot)",
         ["chroot", root, py, "-c",
          'import importlib.metadata as m; [d.metadata["Name"] for d in m.distributions()]']),
        ("torch.utils.collect_env (chroot)",
         ["chroot", root, py, "-m", "torch.utils.collect_env"]),
    ]
    results = []
    for name, cmd in cases:
        seconds, rc, last = best_of(cmd, args.n)
        results.append((name, seconds, rc, last))
        print(f"{name:38s} {seconds * 1000:9.1f} ms  exit {rc}", file=sys.stderr)

    base = results[0][1]
    rows = ["| command | best of {} | vs envsnap | exit | note |".format(args.n),
            "|---|---:|---:|---:|---|"]
    for name, seconds, rc, last in results:
        note = last.replace("|", "\\|")[:120] if rc != 0 else ""
        ratio = f"{seconds / base:.1f}x" if base > 0 else "n/a"
        rows.append(f"| {name} | {seconds * 1000:.1f} ms | {ratio} | {rc} | {note} |")
    table = "\n".join(rows) + "\n"
    print(table)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"## Lock capture of the PyTorch fixture root (bench/bench_lock.py)\n\n"
               f"- date: {date}\n"
               f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, "
               f"kernel {platform.release()}\n"
               f"- root: Debian 12 with python3-torch, torchvision, numpy "
               f"(scripts/fixture-torch-root.sh)\n\n"
               f"{table}\n"
               f"A non-zero exit means the command failed; its last stderr line is the note.\n")
    if not args.no_write:
        write_section(Path(args.output), section)
        print(f"wrote {args.output}", file=sys.stderr)
    failed = results[0][2] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
