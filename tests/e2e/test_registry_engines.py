"""docker and podman pull what `envsnap push` sent to Debian's docker-registry on
127.0.0.1: the pulled image keeps the pushed manifest digest and the lock labels, and a
container of it runs. A tiny root (static busybox, os-release, one dpkg package,
/srv/hello.txt) is captured once and pushed once; the engines are a private dockerd and
podman with its own storage (engines.py).

Needs the Debian packages docker-registry, docker.io and podman."""

import json
import re

import pytest

import engines
from conftest import Layout, canonical, check_digest, check_lock_labels, sha256_hex, text
from engines import HELLO
from registry_fixtures import Client, Registry
from engines import dockerd, podman  # noqa: F401  (module-scoped fixtures)

REF = "team/app:v1"
REPO = "team/app"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


class Pushed:
    """The captured image as pushed: its store, destination, manifest digest and lock."""

    def __init__(self, store, dest, manifest_digest, lock_doc):
        self.store = store
        self.dest = dest
        self.manifest_digest = manifest_digest
        self.digest = lock_doc["digest"]
        self.lock = lock_doc["lock"]



# ---- fixtures --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("registry-engines")


@pytest.fixture(scope="module")
def client(work):
    return Client(work / "client")


@pytest.fixture(scope="module")
def registry(work):
    reg = Registry(work / "registry")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def pushed(work, client, registry):
    root = work / "root"
    engines.make_small_root(root)
    store = work / "store"
    out = text(client.run("capture", root, "-t", REF, "--store", store, "--quiet").stdout)
    words = out.split()
    assert words[:1] == [REF] and len(words) >= 2 and DIGEST_RE.fullmatch(words[1]), out
    manifest_digest = words[1]
    assert Layout(store).manifest_descriptor(REF)["digest"] == manifest_digest

    doc = json.loads(client.run("show", REF, "--store", store, "--json").stdout)
    check_digest(doc)
    assert [p["name"] for p in doc["lock"]["system"]["packages"]["dpkg"]] == ["busybox-static"]

    dest = f"{registry.host}/{REF}"
    proc = client.run("push", REF, dest, "--store", store, "--quiet")
    assert text(proc.stdout) == f"{dest} {manifest_digest}\n"
    assert registry.manifest_digest(REPO, "v1") == manifest_digest
    return Pushed(store, dest, manifest_digest, doc)


# ---- docker ----------------------------------------------------------------------------

def test_docker_pulls_the_pushed_image_and_runs_it(pushed, dockerd):
    # dockerd treats registries on 127.0.0.0/8 as insecure: plain HTTP, no daemon option.
    dockerd.docker("pull", pushed.dest, timeout=300)
    info = json.loads(dockerd.docker("image", "inspect", pushed.dest).stdout)
    assert len(info) == 1
    info = info[0]
    check_lock_labels(info["Config"]["Labels"], pushed)
    assert f"{pushed.dest.rsplit(':', 1)[0]}@{pushed.manifest_digest}" in info["RepoDigests"], \
        info["RepoDigests"]
    assert pushed.dest in info["RepoTags"], info["RepoTags"]
    proc = dockerd.docker("run", "--rm", "--network", "none", pushed.dest,
                          "/bin/busybox", "cat", "/srv/hello.txt", timeout=120)
    assert proc.stdout == HELLO
    dockerd.docker("rmi", "-f", pushed.dest)


# ---- podman ----------------------------------------------------------------------------

def test_podman_pulls_the_pushed_image_and_runs_it(pushed, podman):
    out = text(podman.podman("pull", "--tls-verify=false", pushed.dest, timeout=300).stdout)
    ids = out.split()
    assert ids, f"podman pull printed no image id: {out!r}"
    info = json.loads(podman.podman("image", "inspect", pushed.dest).stdout)
    assert len(info) == 1
    info = info[0]
    assert info["Id"] == ids[-1]
    check_lock_labels(info["Config"]["Labels"], pushed)
    assert info["Digest"] == pushed.manifest_digest
    assert f"{pushed.dest.rsplit(':', 1)[0]}@{pushed.manifest_digest}" in info["RepoDigests"], \
        info["RepoDigests"]
    proc = podman.podman("run", "--rm", "--network", "none", pushed.dest,
                         "/bin/busybox", "cat", "/srv/hello.txt", timeout=120)
    assert proc.stdout == HELLO
    podman.podman("rmi", "-f", pushed.dest)
