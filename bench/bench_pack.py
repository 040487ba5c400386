#!/usr/bin/python3
"""Pack, re-capture, export and restore benchmarks (issue "Pack"), each against the
tool a user would pick instead, all in the same run; results go to BENCHMARKS.md.

Not run by CI. Usage (as root, after building; needs tar, gzip, igzip, umoci, skopeo):
    bench/bench_pack.py [--bin build/envsnap] [--work DIR] [--no-write] [--only torch|cuda]

Nothing is deleted while timing: every output is removed at the end. This machine's ext4
has no journal, and such an ext4 skips, one by one, every inode freed in the last 30 s
when it allocates one, so unpacking right after deleting a tree of 27,000 files measured
the file system more than the tools (restore and umoci unpack both took twice as long).
Likewise every measurement starts after a sync (not timed): the gigabytes the one before
wrote would otherwise be written back during it, and slow it down.

Measures (wall time, the best of two runs, every input read again just before each run:
this machine pages out memory that was not touched for a minute; `tar | gzip -6` runs once):
  * capture + pack of the PyTorch root and of /usr/local/cuda, against
    `tar -c | gzip -6`, `tar -c | igzip -1 -T2` and `umoci insert` (into a fresh image);
  * re-capture of the PyTorch root after one Python distribution changed (stat cache);
  * export to a docker-archive, against `skopeo copy oci:... docker-archive:...`;
  * restore to a directory, against `umoci unpack`.
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lock import SOURCE_DIR, cpu_model, fixture_root  # noqa: E402

BEGIN = "<!-- bench_pack:begin -->"
END = "<!-- bench_pack:end -->"


TRASH = []  # outputs removed at the end, not between measurements
RUNS = 2    # each measure with a target is the best of this many runs, baselines alike


def timed(cmd, shell=False, cwd="/"):
    # Each tool starts with no dirty pages of the one before it to write back.
    os.sync()
    start = time.perf_counter()
    proc = subprocess.run(cmd, shell=shell, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def warm(path):
    subprocess.run(f"tar -cf - -C {path} . > /dev/null", shell=True, check=True)


def du(path):
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, check=True).stdout.split()[0])


def empty_trash():
    for p in TRASH:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    TRASH.clear()


def best_of(make_cmd, inputs, shell=False):
    """The best of RUNS runs; make_cmd(i) gives run i's command (each writes its own
    output), and every input is read again just before each run."""
    times = []
    for i in range(RUNS):
        for path in inputs:
            warm(path)
        times.append(timed(make_cmd(i), shell=shell))
    return min(times)


def bench_pack(binary, name, root, work, rows):
    size = du(root)
    stores = [work / f"store-{name}-{i}" for i in range(RUNS)]
    t_envsnap = best_of(lambda i: [binary, "capture", root, "-t", f"bench/{name}:v1", "--store", stores[i],
                                   "--quiet"], [root])
    warm(root)
    t_gzip = timed(f"tar -cf - -C {root} . | gzip -6 > {work}/{name}.tar.gz", shell=True)
    t_igzip = best_of(lambda i: f"tar -cf - -C {root} . | igzip -1 -T2 -c > {work}/{name}-{i}.tar.igz", [root],
                      shell=True)
    umoci_dirs = [work / f"umoci-{name}-{i}" for i in range(RUNS)]
    for d in umoci_dirs:
        subprocess.run(["umoci", "init", "--layout", d], check=True)
        subprocess.run(["umoci", "new", "--image", f"{d}:t"], check=True)
    t_umoci = best_of(lambda i: ["umoci", "insert", "--image", f"{umoci_dirs[i]}:t", root, "/"], [root])
    rows.append((f"capture + pack, {name} ({size / 2**30:.2f} GiB)", t_envsnap,
                 [("tar | gzip -6", t_gzip), ("tar | igzip -1 -T2", t_igzip), ("umoci insert", t_umoci)]))
    TRASH.extend([work / f"{name}.tar.gz", *[work / f"{name}-{i}.tar.igz" for i in range(RUNS)], *umoci_dirs,
                  *stores[1:]])
    return stores[0], t_envsnap


def bench_recapture(binary, root, work, first, rows):
    copy = work / "torch-copy"
    subprocess.run(["cp", "-a", root, copy], check=True)
    store = work / "store-recapture"
    t_first = timed([binary, "capture", copy, "-t", "bench/re:v1", "--store", store, "--quiet"])
    pkg = copy / "usr/lib/python3/dist-packages/numpy-1.24.2.egg-info/PKG-INFO"
    pkg.write_text(pkg.read_text().replace("Version: 1.24.2", "Version: 1.24.3", 1))
    t_again = timed([binary, "capture", copy, "-t", "bench/re:v2", "--store", store, "--quiet"])
    rows.append(("re-capture after one distribution changed (PyTorch root)", t_again,
                 [("first capture of the same tree", t_first)]))
    TRASH.extend([copy, store])


def bench_export_restore(binary, store, work, rows):
    blobs = store / "blobs"
    outs = [work / f"export-{i}.tar" for i in range(RUNS)]
    t_export = best_of(lambda i: [binary, "export", "bench/torch:v1", "-o", outs[i], "--store", store], [blobs])
    skopeo_outs = [work / f"skopeo-{i}.tar" for i in range(RUNS)]
    t_skopeo = best_of(lambda i: ["skopeo", "--insecure-policy", "copy", f"oci:{store}:bench/torch:v1",
                                  f"docker-archive:{skopeo_outs[i]}:bench/torch:v1"], [blobs])
    TRASH.extend(outs + skopeo_outs)
    rows.append(("export (PyTorch root image)", t_export, [("skopeo copy to docker-archive", t_skopeo)]))
    targets = [work / f"restored-{i}" for i in range(RUNS)]
    t_restore = best_of(lambda i: [binary, "restore", "bench/torch:v1", targets[i], "--store", store], [blobs])
    bundles = [work / f"umoci-bundle-{i}" for i in range(RUNS)]
    t_umoci = best_of(lambda i: ["umoci", "unpack", "--image", f"{store}:bench/torch:v1", bundles[i]], [blobs])
    TRASH.extend(targets + bundles)
    rows.append(("restore (PyTorch root image)", t_restore, [("umoci unpack", t_umoci)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(SOURCE_DIR / "build" / "envsnap"))
    ap.add_argument("--work", default="/var/tmp/envsnap-bench")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--only", choices=["torch", "cuda"])
    args = ap.parse_args()
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):
        # Leftovers of an interrupted run: remove them, then let their inodes age (see above).
        shutil.rmtree(work)
        print("removed the leftovers of an earlier run; waiting 35 s for their inodes to age")
        time.sleep(35)
    work.mkdir(parents=True, exist_ok=True)
    binary = os.path.abspath(args.bin)
    rows = []
    if args.only in (None, "torch"):
        root = fixture_root()
        torch_store, first = bench_pack(binary, "torch", root, work, rows)
        bench_recapture(binary, root, work, first, rows)
        bench_export_restore(binary, torch_store, work, rows)
        TRASH.append(torch_store)
    if args.only is None:
        # The torch part leaves about 12 GB of outputs in the page cache: without this the
        # cuda part runs while the kernel reclaims memory on the same two cores.
        empty_trash()
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        time.sleep(65)  # and the inodes just freed age (see above)
    if args.only in (None, "cuda"):
        cuda = os.path.realpath("/usr/local/cuda")
        store, _ = bench_pack(binary, "cuda", cuda, work, rows)
        TRASH.append(store)

    lines = ["| measure | envsnap | baseline | baseline time | envsnap vs baseline |", "|---|---:|---|---:|---:|"]
    for name, t, baselines in rows:
        for i, (bname, bt) in enumerate(baselines):
            lines.append(f"| {name if i == 0 else ''} | {t:.2f} s | {bname.replace('|', chr(92) + '|')} | {bt:.2f} s | "
                         f"{t / bt:.2f}x the time |")
    table = "\n".join(lines)
    print(table)
    empty_trash()
    if args.no_write:
        return
    section = (f"{BEGIN}\n## Pack, re-capture, export, restore (bench/bench_pack.py)\n\n"
               f"- date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC\n"
               f"- machine: {cpu_model()}, {os.cpu_count()} cores, inputs read just before each run, "
               f"best of {RUNS} runs (gzip -6: one)\n\n"
               f"{table}\n\nA ratio below 1 means envsnap took less time than the baseline.\n{END}")
    bench = SOURCE_DIR / "BENCHMARKS.md"
    text = bench.read_text() if bench.exists() else "# Benchmarks\n"
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    bench.write_text(text)
    print(f"wrote {bench}")


if __name__ == "__main__":
    main()
