"""`envsnap export` and `envsnap import` against the real engines: a private dockerd,
podman with its own storage, and skopeo. A tiny root (static busybox, os-release, one
dpkg package, /srv/hello.txt) is captured once into a store; every archive that leaves
envsnap must load in the engines, and every archive the engines write must come back
into a store with the same lock digest."""

import gzip
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

import engines
from conftest import ERROR_PREFIX, canonical, check_digest, check_lock_labels, envsnap, sha256_hex, text
from engines import HELLO
from engines import dockerd, podman  # noqa: F401  (module-scoped fixtures)

REF = "e2e/small:v1"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


class Snap:
    """The captured small image: its store, manifest digest and lock."""

    def __init__(self, base, store, manifest_digest, lock_doc):
        self.base = base
        self.store = store
        self.manifest_digest = manifest_digest
        self.lock_doc = lock_doc
        self.digest = lock_doc["digest"]
        self.lock = lock_doc["lock"]


# ---- reading an OCI image layout (the store, or an unpacked archive) -----------------

def blob_path(layout, digest):
    assert DIGEST_RE.fullmatch(digest), digest
    return Path(layout) / "blobs" / "sha256" / digest[len("sha256:"):]


def layout_tags(layout):
    """{ref.name: manifest descriptor} of a layout's index.json."""
    index = json.loads((Path(layout) / "index.json").read_bytes())
    out = {}
    for desc in index["manifests"]:
        name = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
        assert name not in out, f"{name} tagged twice in {layout}/index.json"
        out[name] = desc
    return out


def layout_image(layout, ref):
    """(manifest digest, manifest, config) of `ref` in a layout, every blob checked
    against its digest."""
    tags = layout_tags(layout)
    assert ref in tags, f"{ref} not in {layout}/index.json: {sorted(map(str, tags))}"
    digest = tags[ref]["digest"]
    raw = blob_path(layout, digest).read_bytes()
    assert "sha256:" + sha256_hex(raw) == digest
    manifest = json.loads(raw)
    config_raw = blob_path(layout, manifest["config"]["digest"]).read_bytes()
    assert "sha256:" + sha256_hex(config_raw) == manifest["config"]["digest"]
    return digest, manifest, json.loads(config_raw)



# ---- envsnap verbs ---------------------------------------------------------------------

def show_lock(store, ref):
    """`envsnap show REF --store S --json`, digest checked."""
    proc = envsnap("show", ref, "--store", store, "--json")
    doc = json.loads(proc.stdout)
    assert doc["lockVersion"] == 1
    check_digest(doc)
    return doc


def list_store(store):
    entries = json.loads(envsnap("ls", "--store", store, "--json").stdout)
    for entry in entries:
        assert set(entry) >= {"name", "digest", "size", "created"}, entry
    return entries


def import_archive(archive, store, tag=None, expect_name=None):
    """`envsnap import` into `store`; checks what it printed against the store and
    returns the name it was stored under: `tag`, else one of the names `expect_name`."""
    args = ["import", archive, "--store", store] + (["-t", tag] if tag else [])
    out = text(envsnap(*args).stdout)
    digests = DIGEST_RE.findall(out)
    assert digests, f"import printed no manifest digest: {out!r}"
    tags = layout_tags(store)
    printed = [t for t in tags if t and t in out.split()]
    assert len(printed) == 1, f"import printed {out!r}; the store holds {sorted(map(str, tags))}"
    name = printed[0]
    if tag:
        assert name == tag
    elif expect_name:
        assert name in expect_name, f"stored as {name}, expected one of {expect_name}"
    assert name in tags, f"{name} not in the store: {sorted(map(str, tags))}"
    assert tags[name]["digest"] in digests, f"printed {out!r}; store has {tags[name]}"
    return name


def import_and_check(archive, snap, tmp_path, tag=None, expect_name=None):
    """Imports `archive` into a fresh store: the lock digest and lock are the snapshot's."""
    store = tmp_path / "imported-store"
    name = import_archive(archive, store, tag=tag, expect_name=expect_name)
    doc = show_lock(store, name)
    assert doc["digest"] == snap.digest
    assert doc["lock"] == snap.lock
    entries = list_store(store)
    assert [e["name"] for e in entries] == [name]
    assert entries[0]["digest"] == layout_tags(store)[name]["digest"]
    _, _, config = layout_image(store, name)
    check_lock_labels(config["config"]["Labels"], snap)
    return store, name


def tar_members(path):
    """{name: bytes or None} of a (possibly gzip-compressed) tar; leading ./ dropped."""
    out = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar.getmembers():
            name = member.name[2:] if member.name.startswith("./") else member.name
            out[name.rstrip("/")] = tar.extractfile(member).read() if member.isreg() else None
    return out


# ---- fixtures --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def snap(tmp_path_factory, envsnap_bin):
    base = tmp_path_factory.mktemp("snap")
    root = base / "root"
    engines.make_small_root(root)
    store = base / "store"
    out = text(envsnap("capture", root, "-t", REF, "--store", store, "--quiet").stdout)
    words = out.split()
    assert words[:1] == [REF] and len(words) >= 2 and DIGEST_RE.fullmatch(words[1]), out
    manifest_digest = words[1]
    doc = show_lock(store, REF)
    system = doc["lock"]["system"]
    assert system["os"]["id"] == "debian"
    assert [p["name"] for p in system["packages"]["dpkg"]] == ["busybox-static"]
    s = Snap(base, store, manifest_digest, doc)
    digest, _, config = layout_image(store, REF)
    assert digest == manifest_digest
    check_lock_labels(config["config"]["Labels"], s)
    entries = list_store(store)
    assert [(e["name"], e["digest"]) for e in entries] == [(REF, manifest_digest)]
    return s


@pytest.fixture(scope="module")
def exports(snap):
    """The snapshot exported three ways: default .tar, default .tar.gz, --format oci."""
    out = {}
    for key, name, extra in (("tar", "small.tar", []), ("gz", "small.tar.gz", []),
                             ("oci", "small-oci.tar", ["--format", "oci"])):
        path = snap.base / name
        envsnap("export", REF, "-o", path, *extra, "--store", snap.store)
        assert path.is_file(), f"export did not write {path}"
        out[key] = path
    return out


@pytest.fixture
def skopeo_tmp(tmp_path):
    d = tmp_path / "skopeo-tmp"
    d.mkdir()
    return d


# ---- the archives envsnap writes ---------------------------------------------------------

def check_oci_layout_members(members, snap):
    assert json.loads(members["oci-layout"])["imageLayoutVersion"] == "1.0.0"
    index = json.loads(members["index.json"])
    assert [d["digest"] for d in index["manifests"]] == [snap.manifest_digest]
    manifest_raw = members["blobs/sha256/" + snap.manifest_digest[7:]]
    manifest = json.loads(manifest_raw)
    for desc in [manifest["config"], *manifest["layers"]]:
        data = members["blobs/sha256/" + desc["digest"][7:]]
        assert "sha256:" + sha256_hex(data) == desc["digest"]
        assert len(data) == desc["size"]
    return manifest


def test_default_export_is_docker_archive_and_oci_layout(snap, exports):
    members = tar_members(exports["tar"])
    manifest = check_oci_layout_members(members, snap)
    docker = json.loads(members["manifest.json"])
    assert len(docker) == 1
    assert docker[0]["RepoTags"] == [REF]
    config = json.loads(members[docker[0]["Config"]])
    check_lock_labels(config["config"]["Labels"], snap)
    assert len(docker[0]["Layers"]) == len(manifest["layers"]) >= 1
    for path in docker[0]["Layers"]:
        assert members[path] is not None, f"manifest.json names {path}, not in the archive"


def test_tar_gz_export_is_stored_gzip_of_the_same_archive(exports):
    raw = exports["gz"].read_bytes()
    assert raw[:2] == b"\x1f\x8b", "the .tar.gz export is not gzip"
    inner = gzip.decompress(raw)
    # Level 0: stored deflate blocks, so the gzip is no smaller than what it holds.
    assert len(raw) > len(inner)
    assert tar_members(exports["gz"]) == tar_members(exports["tar"])


def test_oci_export_is_only_an_oci_layout(snap, exports):
    members = tar_members(exports["oci"])
    assert "manifest.json" not in members
    check_oci_layout_members(members, snap)
    assert set(members) <= {"oci-layout", "index.json", "blobs", "blobs/sha256"} | {
        n for n in members if n.startswith("blobs/sha256/")}


def test_export_unknown_ref_exits_2(snap, tmp_path):
    out = tmp_path / "missing.tar"
    proc = envsnap("export", "e2e/missing:v1", "-o", out, "--store", snap.store, check=False)
    assert proc.returncode == 2, text(proc.stderr)
    assert text(proc.stderr).startswith(ERROR_PREFIX)
    assert not out.exists()


# ---- docker ----------------------------------------------------------------------------

def docker_load(dockerd, archive):
    dockerd.docker("rmi", "-f", REF, check=False)
    out = text(dockerd.docker("load", "-i", archive).stdout)
    assert f"Loaded image: {REF}" in out.splitlines(), out
    info = json.loads(dockerd.docker("image", "inspect", REF).stdout)
    assert len(info) == 1
    return info[0]


def test_docker_load_and_run(snap, exports, dockerd):
    info = docker_load(dockerd, exports["tar"])
    check_lock_labels(info["Config"]["Labels"], snap)
    proc = dockerd.docker("run", "--rm", "--network", "none", REF,
                          "/bin/busybox", "cat", "/srv/hello.txt", timeout=120)
    assert proc.stdout == HELLO


def test_docker_load_tar_gz(snap, exports, dockerd):
    info = docker_load(dockerd, exports["gz"])
    check_lock_labels(info["Config"]["Labels"], snap)
    proc = dockerd.docker("run", "--rm", "--network", "none", REF,
                          "/bin/busybox", "cat", "/srv/hello.txt", timeout=120)
    assert proc.stdout == HELLO


def test_docker_save_imports_with_the_same_lock(snap, exports, dockerd, tmp_path):
    docker_load(dockerd, exports["tar"])
    saved = tmp_path / "docker-save.tar"
    dockerd.docker("save", "-o", saved, REF)
    assert "manifest.json" in tar_members(saved)
    import_and_check(saved, snap, tmp_path, expect_name=(REF,))


def test_docker_save_imports_under_another_tag(snap, exports, dockerd, tmp_path):
    docker_load(dockerd, exports["tar"])
    saved = tmp_path / "docker-save.tar"
    dockerd.docker("save", "-o", saved, REF)
    import_and_check(saved, snap, tmp_path, tag="e2e/renamed:v2")


@pytest.mark.parametrize("compressor", ["gzip", "zstd"])
def test_compressed_docker_save_imports(snap, exports, dockerd, tmp_path, compressor):
    tool = shutil.which(compressor)
    if tool is None:
        pytest.fail(f"{compressor} is not installed (Debian package {compressor})")
    docker_load(dockerd, exports["tar"])
    saved = tmp_path / "docker-save.tar"
    dockerd.docker("save", "-o", saved, REF)
    engines.run_tool([tool, "-q", saved] if compressor == "zstd" else [tool, saved])
    suffix = ".zst" if compressor == "zstd" else ".gz"
    packed = saved.with_name(saved.name + suffix)
    assert packed.is_file()
    import_and_check(packed, snap, tmp_path, expect_name=(REF,))


# ---- podman ----------------------------------------------------------------------------

def podman_load(podman, archive):
    """Loads `archive`; returns (name podman gave it, its inspect document)."""
    out = text(podman.podman("load", "-i", archive).stdout)
    names = re.findall(r"^Loaded image(?:\(s\))?: (\S+)$", out, re.M)
    assert len(names) == 1, out
    name = names[0]
    # podman qualifies a short name with localhost/ or docker.io/.
    assert name == REF or name.endswith("/" + REF), name
    info = json.loads(podman.podman("image", "inspect", name).stdout)
    assert len(info) == 1
    return name, info[0]


@pytest.mark.parametrize("key", ["tar", "gz", "oci"])
def test_podman_load(snap, exports, podman, key):
    name, info = podman_load(podman, exports[key])
    check_lock_labels(info["Config"]["Labels"], snap)
    podman.podman("rmi", "-f", name)


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_podman_save_imports_with_the_same_lock(snap, exports, podman, tmp_path, fmt):
    name, _ = podman_load(podman, exports["tar"])
    saved = tmp_path / f"podman-{fmt}.tar"
    podman.podman("save", "--format", fmt, "-o", saved, name)
    members = tar_members(saved)
    assert ("manifest.json" in members) == (fmt == "docker-archive")
    import_and_check(saved, snap, tmp_path, tag="e2e/from-podman:v1")
    podman.podman("rmi", "-f", name)


# ---- skopeo ----------------------------------------------------------------------------

@pytest.mark.parametrize("transport,key", [("docker-archive", "tar"), ("oci-archive", "tar"),
                                           ("oci-archive", "oci")])
def test_skopeo_inspects_exports(snap, exports, skopeo_tmp, transport, key):
    proc = engines.skopeo("inspect", f"{transport}:{exports[key]}", tmpdir=skopeo_tmp)
    info = json.loads(proc.stdout)
    check_lock_labels(info["Labels"], snap)
    raw = engines.skopeo("inspect", "--config", f"{transport}:{exports[key]}",
                         tmpdir=skopeo_tmp).stdout
    check_lock_labels(json.loads(raw)["config"]["Labels"], snap)


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_skopeo_copy_from_store_imports(snap, skopeo_tmp, tmp_path, transport):
    archive = tmp_path / f"skopeo-{transport}.tar"
    engines.skopeo("copy", f"oci:{snap.store}:{REF}", f"{transport}:{archive}:{REF}",
                   tmpdir=skopeo_tmp)
    members = tar_members(archive)
    assert ("manifest.json" in members) == (transport == "docker-archive")
    # skopeo's docker-archive names the image docker.io/e2e/small:v1.
    import_and_check(archive, snap, tmp_path, expect_name=(REF, "docker.io/" + REF))


@pytest.mark.parametrize("transport,key", [("docker-archive", "tar"), ("oci-archive", "oci"),
                                           ("oci-archive", "gz")])
def test_skopeo_copies_exports_to_dir(snap, exports, skopeo_tmp, tmp_path, transport, key):
    source = exports[key]
    if key == "gz":
        # skopeo's archive transports read plain tar only: unpack the outer gzip.
        source = tmp_path / "unzipped.tar"
        source.write_bytes(gzip.decompress(exports[key].read_bytes()))
    dest = tmp_path / "dir-copy"
    engines.skopeo("copy", f"{transport}:{source}", f"dir:{dest}", tmpdir=skopeo_tmp)
    manifest = json.loads((dest / "manifest.json").read_bytes())
    assert manifest["mediaType"] in (OCI_MANIFEST, DOCKER_MANIFEST) or \
        manifest.get("schemaVersion") == 2
    config_raw = (dest / manifest["config"]["digest"][7:]).read_bytes()
    assert "sha256:" + sha256_hex(config_raw) == manifest["config"]["digest"]
    check_lock_labels(json.loads(config_raw)["config"]["Labels"], snap)
    for layer in manifest["layers"]:
        data = (dest / layer["digest"][7:]).read_bytes()
        assert "sha256:" + sha256_hex(data) == layer["digest"]


# ---- broken inputs ---------------------------------------------------------------------

@pytest.mark.parametrize("name,extra", [("out.tar", []), ("out.tar.gz", []),
                                        ("out-oci.tar", ["--format", "oci"])])
def test_export_of_a_corrupt_blob_exits_6(snap, tmp_path, name, extra):
    store = tmp_path / "store"
    shutil.copytree(snap.store, store, symlinks=True)
    _, manifest, _ = layout_image(store, REF)
    layer = max(manifest["layers"], key=lambda d: d["size"])
    path = blob_path(store, layer["digest"])
    data = bytearray(path.read_bytes())
    assert len(data) > 16
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = envsnap("export", REF, "-o", out_dir / name, *extra, "--store", store, check=False)
    assert proc.returncode == 6, text(proc.stderr)
    assert layer["digest"] in text(proc.stderr)
    assert sorted(p.name for p in out_dir.iterdir()) == [], "export left a file behind"


@pytest.mark.parametrize("key", ["tar", "gz", "oci"])
def test_import_of_a_truncated_archive_leaves_the_store_alone(snap, exports, tmp_path, key):
    store = tmp_path / "store"
    shutil.copytree(snap.store, store, symlinks=True)
    index_before = (store / "index.json").read_bytes()
    raw = exports[key].read_bytes()
    cut = tmp_path / ("truncated" + "".join(exports[key].suffixes))
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    proc = envsnap("import", cut, "-t", "e2e/truncated:v1", "--store", store, check=False)
    assert proc.returncode in (2, 6), (proc.returncode, text(proc.stderr))
    assert text(proc.stderr).startswith(ERROR_PREFIX), text(proc.stderr)
    assert (store / "index.json").read_bytes() == index_before
    assert [e["name"] for e in list_store(store)] == [REF]
