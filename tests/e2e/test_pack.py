"""capture -t on the real PyTorch root: the store is a valid OCI layout that skopeo and
umoci read; restore reproduces the tree; the bytes are deterministic and incremental;
a killed capture leaves a clean store; a corrupt blob is named and refused."""

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Layout, envsnap, run, tool, validate_oci

TAG = "demo/torch:v1"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("pack")


@pytest.fixture(scope="module")
def store(work, torch_root):
    s = work / "store"
    envsnap("capture", torch_root, "-t", TAG, "--store", s, "--quiet", timeout=900)
    return s


@pytest.fixture(scope="module")
def plan(torch_root, work):
    proc = envsnap("capture", torch_root, "--dry-run", "--json", "--quiet", "--store", work / "unused-store")
    return json.loads(proc.stdout)


def test_store_is_a_valid_oci_layout(store, work):
    layout = Layout(store)
    validate_oci("image-layout-schema.json", (store / "oci-layout").read_bytes(), work)
    validate_oci("image-index-schema.json", (store / "index.json").read_bytes(), work)
    desc = layout.manifest_descriptor(TAG)
    manifest_bytes = layout.blob(desc["digest"])
    validate_oci("image-manifest-schema.json", manifest_bytes, work)
    config_bytes = layout.blob(json.loads(manifest_bytes)["config"]["digest"])
    validate_oci("config-schema.json", config_bytes, work)
    config = json.loads(config_bytes)
    labels = config["config"]["Labels"]
    lock = json.loads(labels["dev.envsnap.lock"])
    assert "sha256:" + __import__("hashlib").sha256(labels["dev.envsnap.lock"].encode()).hexdigest() \
        == labels["dev.envsnap.lock.digest"]
    assert lock["torch"][0]["build"] == "cpu"
    env = config["config"]["Env"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in env
    assert any(e.startswith("NVIDIA_DRIVER_CAPABILITIES=") and "compute" in e for e in env)
    assert len(config["rootfs"]["diff_ids"]) == len(json.loads(manifest_bytes)["layers"])


def test_layers_follow_components(store):
    names = list(Layout(store).layer_digests(TAG))
    assert names[0] == "base-os"
    assert "python-torch" in names, names
    assert "python" in names
    assert len(names) <= 60
    for layer in Layout(store).manifest(TAG)["layers"]:
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"


def test_show_reads_the_lock_from_the_store(store):
    out = envsnap("show", TAG, "--store", store).stdout.decode()
    assert "1.13.0a0" in out and "cpu" in out
    doc = json.loads(envsnap("show", TAG, "--store", store, "--json").stdout)
    label = Layout(store).config(TAG)["config"]["Labels"]["dev.envsnap.lock.digest"]
    assert doc["digest"] == label


def test_skopeo_reads_and_copies_the_store(store, work):
    skopeo = tool("/usr/bin/skopeo")
    out = run(skopeo, "inspect", f"oci:{store}:{TAG}").stdout
    info = json.loads(out)
    assert info["Labels"]["dev.envsnap.lock.digest"].startswith("sha256:")
    copy = work / "skopeo-copy"
    run(skopeo, "copy", f"oci:{store}:{TAG}", f"oci:{copy}:other/name:v2")
    # A layout written by skopeo is a store envsnap reads.
    listed = json.loads(envsnap("ls", "--store", copy, "--json").stdout)
    assert [i["name"] for i in listed] == ["other/name:v2"]
    assert Layout(copy).manifest_descriptor("other/name:v2")["digest"] == \
        Layout(store).manifest_descriptor(TAG)["digest"]


def test_umoci_unpacks_an_image_of_the_store(store, work):
    umoci = tool("/usr/bin/umoci")
    bundle = work / "umoci-bundle"
    run(umoci, "unpack", "--image", f"{store}:{TAG}", bundle, timeout=900)
    assert (bundle / "rootfs/usr/lib/python3/dist-packages/torch/version.py").is_file()
    shutil.rmtree(bundle)


def walk(root):
    """path -> (type, mode, uid, gid, link, xattrs, content digest) for every entry under root."""
    out = {}
    rootb = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(rootb):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = full[len(rootb):]
            st = os.lstat(full)
            link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
            try:
                xattrs = {k: os.getxattr(full, k, follow_symlinks=False)
                          for k in sorted(os.listxattr(full, follow_symlinks=False))
                          if not k.startswith("security.selinux")}
            except OSError:
                xattrs = {}
            content = None
            if stat.S_ISREG(st.st_mode):
                import hashlib
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                content = h.hexdigest()
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, link,
                        xattrs, content)
    return out


def under(path, prefixes):
    return any(path == p or path.startswith(p.rstrip(b"/") + b"/") for p in prefixes)


def test_restore_reproduces_the_tree(store, torch_root, plan, work):
    target = work / "restored"
    envsnap("restore", TAG, target, "--store", store, timeout=900)
    excluded = [os.fsencode(e["path"]) for e in plan["excluded"]]
    sanitised = {os.fsencode(s["path"]) for s in plan["sanitised"]}
    assert excluded, "the plan left nothing out: /proc, /dev or the caches should be listed"
    source = walk(torch_root)
    restored = walk(target)
    mismatches = []
    for path, facts in source.items():
        if under(path, excluded):
            if path in restored and not (path in excluded and facts[0] == stat.S_IFDIR):
                mismatches.append((path, "excluded but present"))
            continue
        if path not in restored:
            mismatches.append((path, "missing"))
            continue
        got = restored[path]
        if path in sanitised:
            got, facts = got[:6], facts[:6]
        if got != facts:
            mismatches.append((path, facts, got))
    extra = [p for p in restored if p not in source]
    assert not mismatches, mismatches[:20]
    assert not extra, extra[:20]
    shutil.rmtree(target)


def test_capture_is_deterministic_across_atime_and_copies(store, torch_root, work):
    reference = Layout(store).manifest_descriptor(TAG)["digest"]
    # Reading every file touched atimes already; touch a few more explicitly, then capture again.
    for p in list((torch_root / "usr/lib/python3/dist-packages/numpy").rglob("*.py"))[:50]:
        st = p.stat()
        os.utime(p, ns=(time.time_ns(), st.st_mtime_ns))
    again = work / "store-again"
    envsnap("capture", torch_root, "-t", TAG, "--store", again, "--quiet", "--threads", "1", timeout=900)
    assert Layout(again).manifest_descriptor(TAG)["digest"] == reference
    shutil.rmtree(again)
    copy = work / "copy"
    run("cp", "-a", torch_root, copy, timeout=900)
    envsnap("capture", copy, "-t", TAG, "--store", work / "store-copy", "--quiet", timeout=900)
    assert Layout(work / "store-copy").manifest_descriptor(TAG)["digest"] == reference
    shutil.rmtree(work / "store-copy")


def test_changing_one_distribution_repacks_one_layer(store, work, torch_root):
    copy = work / "copy"
    if not copy.exists():
        run("cp", "-a", torch_root, copy, timeout=900)
    plan = json.loads(envsnap("capture", copy, "--dry-run", "--json", "--quiet", "--store", work / "unused").stdout)
    pkg_info = "/usr/lib/python3/dist-packages/numpy-1.24.2.egg-info/PKG-INFO"
    owners = [l["name"] for l in plan["layers"] if pkg_info in l["paths"]]
    assert len(owners) == 1, owners
    before = Layout(store).layer_digests(TAG)
    f = copy / pkg_info.lstrip("/")
    f.write_text(f.read_text().replace("Version: 1.24.2", "Version: 1.24.3", 1))
    out = json.loads(envsnap("capture", copy, "-t", "demo/torch:v2", "--store", store, "--quiet", "--json",
                             timeout=900).stdout)
    after = Layout(store).layer_digests("demo/torch:v2")
    assert set(after) == set(before)
    changed = sorted(n for n in before if before[n] != after[n])
    assert changed == owners, f"expected only {owners} to change, got {changed}"
    # The unchanged layers were taken from the stat cache only when their files kept their inodes;
    # either way their digests are the same.
    assert [l for l in out["layers"] if l["name"] == owners[0]][0]["reused"] is False
    shutil.rmtree(copy)


def test_recapture_reuses_only_blobs_that_still_match_their_digest(store, torch_root):
    """A second capture of an unchanged root takes every layer from the stat cache; a cached
    blob whose bytes were damaged is not re-used but packed again, which repairs the store."""
    again = "demo/torch:again"
    reference = Layout(store).manifest_descriptor(TAG)["digest"]
    out = json.loads(envsnap("capture", torch_root, "-t", again, "--store", store, "--quiet", "--json",
                             timeout=900).stdout)
    assert all(l["reused"] for l in out["layers"]), out["layers"]
    assert out["manifest"] == reference

    layout = Layout(store)
    smallest = min(layout.manifest(TAG)["layers"], key=lambda l: l["size"])
    path = layout.blob_path(smallest["digest"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    proc = envsnap("capture", torch_root, "-t", again, "--store", store, "--json", timeout=900)
    out = json.loads(proc.stdout)
    repacked = [l["name"] for l in out["layers"] if not l["reused"]]
    assert repacked == [smallest["annotations"]["dev.envsnap.layer"]], out["layers"]
    assert smallest["digest"] in proc.stderr.decode()
    assert out["manifest"] == reference
    assert envsnap("check", "--store", store).returncode == 0
    envsnap("rm", again, "--store", store)


def test_killed_capture_leaves_a_clean_store(torch_root, work):
    s = work / "store-kill"
    for delay in (0.3, 1.5, 4.0):
        proc = subprocess.Popen([os.environ.get("ENVSNAP_BIN", "envsnap"), "capture", str(torch_root), "-t",
                                 "kill/me:v1", "--store", str(s), "--quiet"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if s.exists():
            check = envsnap("check", "--store", s, check=False)
            assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    envsnap("capture", torch_root, "-t", "kill/me:v1", "--store", s, "--quiet", timeout=900)
    check = envsnap("check", "--store", s)
    assert b"clean" in check.stdout
    shutil.rmtree(s)


def test_corrupt_blob_is_named_and_refused(store, work):
    layout = Layout(store)
    layer = layout.manifest(TAG)["layers"][-1]["digest"]
    path = layout.blob_path(layer)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF
    original = bytes(data)
    data[middle] ^= 0xFF
    good = bytes(data)
    path.write_bytes(original)
    try:
        check = envsnap("check", "--store", store, check=False)
        assert check.returncode == 1
        assert layer.split(":")[1] in check.stdout.decode() + check.stderr.decode()
        target = work / "restore-corrupt"
        r = envsnap("restore", TAG, target, "--store", store, check=False, timeout=900)
        assert r.returncode == 6, r.stderr.decode()
        assert not target.exists()
        assert not [p for p in work.iterdir() if p.name.startswith("restore-corrupt")]
        out = work / "corrupt-export.tar"
        e = envsnap("export", TAG, "-o", out, "--store", store, check=False, timeout=900)
        assert e.returncode == 6, e.stderr.decode()
        assert not out.exists()
    finally:
        path.write_bytes(good)
    assert envsnap("check", "--store", store).returncode == 0


def test_rm_and_gc(store):
    before = sum(1 for _ in (store / "blobs/sha256").iterdir())
    envsnap("rm", "demo/torch:v2", "--store", store)
    gc = envsnap("gc", "--store", store).stdout.decode()
    after = sum(1 for _ in (store / "blobs/sha256").iterdir())
    assert after < before, gc
    envsnap("check", "--store", store)
    # Capture's layer records go with their blobs: every one left names a stored blob.
    records = list((store / ".envsnap/layers").glob("*.json"))
    assert records
    for r in records:
        blob = json.loads(r.read_text())["blob"]["digest"]
        assert Layout(store).blob_path(blob).exists(), f"{r.name} names {blob}, which gc removed"
    # The remaining image is whole.
    assert envsnap("show", TAG, "--store", store).returncode == 0
    r = envsnap("rm", "no/such:tag", "--store", store, check=False)
    assert r.returncode == 2 and b"no/such:tag" in r.stderr
