"""push, pull, login and logout against Debian's docker-registry on 127.0.0.1: the image
arrives unchanged, unchanged blobs are not sent again, basic and token authentication,
a registry killed mid-push, corrupt and truncated blobs, skopeo on either side.

Needs the Debian packages docker-registry, apache2-utils, skopeo and openssl
(registry_fixtures.py)."""

import base64
import json
import re
import stat
import time

import pytest

from conftest import Layout, text, validate_oci
from engines import skopeo
from registry_fixtures import (Client, Proxy, Registry, TokenServer, basic_auth_registry, finish,
                               free_port, make_root, random_bytes)

V1, V2 = "small/app:v1", "small/app:v2"
BIG = "big/app:v1"
SUMMARY = re.compile(r"\b(\d+) blobs uploaded, (\d+) already there\b")


# ---- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="module")
def client(work):
    return Client(work / "client")


@pytest.fixture(scope="module")
def small(work, client):
    """A store holding small/app:v1 and small/app:v2, which differ in /srv/a.txt only."""
    root = make_root(work / "small-root",
                     rest_files={"srv/a.txt": b"version 1\n", "srv/b.bin": random_bytes(1, 3 << 20)},
                     base_files={"usr/share/base-files/motd": b"welcome\n"})
    store = work / "small-store"
    client.run("capture", root, "-t", V1, "--store", store, "--quiet")
    (root / "srv/a.txt").write_bytes(b"version 2\n")
    client.run("capture", root, "-t", V2, "--store", store, "--quiet")
    return store


@pytest.fixture(scope="module")
def registry(work):
    reg = Registry(work / "registry")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def counting(registry):
    proxy = Proxy(registry.port)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def pushed_v1(small, registry, client):
    """small/app:v1 pushed to <registry>/team/small:v1: (reference, manifest digest)."""
    dest = f"{registry.host}/team/small:v1"
    client.run("push", V1, dest, "--store", small, "--quiet")
    return dest, Layout(small).manifest_descriptor(V1)["digest"]


@pytest.fixture(scope="module")
def basic_registry(work):
    reg = basic_auth_registry(work / "basic-registry", {"alice": "s3cret-A"})
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token_server(work):
    server = TokenServer(work / "token", {"bob": "hunter2-B"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_registry(work, token_server):
    reg = Registry(work / "token-registry", auth=token_server.registry_auth())
    yield reg
    reg.stop()


# ---- helpers ----------------------------------------------------------------------

def lock_digest(store, ref):
    return Layout(store).config(ref)["config"]["Labels"]["dev.envsnap.lock.digest"]


def blob_digests(store, ref):
    """The config and layer digests of an image, config first."""
    m = Layout(store).manifest(ref)
    return [m["config"]["digest"], *[l["digest"] for l in m["layers"]]]


def parse_push_json(proc):
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"destination", "digest", "uploaded", "existing"}, doc
    return doc


def assert_store_clean(client, store):
    """Every blob file holds what its name says and `check` passes; a store that was never
    created is clean too."""
    if not (store / "index.json").exists():
        return
    for f in (store / "blobs" / "sha256").iterdir():
        Layout(store).blob("sha256:" + f.name)
    client.run("check", "--store", store)


def tags(store):
    if not (store / "index.json").exists():
        return []
    return [m.get("annotations", {}).get("org.opencontainers.image.ref.name")
            for m in Layout(store).index()["manifests"]]


# ---- the source images ------------------------------------------------------------

def test_v2_differs_from_v1_in_the_rest_layer_only(small):
    l1, l2 = Layout(small).layer_digests(V1), Layout(small).layer_digests(V2)
    assert list(l1) == list(l2)
    assert len(l1) >= 2 and "base-os" in l1 and "rest" in l1, list(l1)
    assert [name for name in l1 if l1[name] != l2[name]] == ["rest"]
    assert Layout(small).manifest(V1)["config"]["digest"] != Layout(small).manifest(V2)["config"]["digest"]


# ---- 1. push, then pull into a fresh store ----------------------------------------

def test_push_then_pull_gives_the_same_image(small, registry, client, work):
    digest = Layout(small).manifest_descriptor(V1)["digest"]
    dest = f"{registry.host}/team/roundtrip:v1"
    proc = client.run("push", V1, dest, "--store", small)
    assert text(proc.stdout) == f"{dest} {digest}\n"
    m = SUMMARY.search(text(proc.stderr))
    assert m, text(proc.stderr)
    assert (int(m.group(1)), int(m.group(2))) == (len(blob_digests(small, V1)), 0)
    assert registry.manifest_digest("team/roundtrip", "v1") == digest
    for d in blob_digests(small, V1):
        assert registry.has_blob("team/roundtrip", d), d

    pulled = work / "roundtrip-store"
    proc = client.run("pull", dest, "--store", pulled)
    assert text(proc.stdout) == f"team/roundtrip:v1 {digest}\n"
    layout = Layout(pulled)
    assert layout.manifest_descriptor("team/roundtrip:v1")["digest"] == digest
    assert [i["name"] for i in json.loads(client.run("ls", "--store", pulled, "--json").stdout)] == \
        ["team/roundtrip:v1"]
    for d in blob_digests(small, V1):
        assert layout.blob(d) == Layout(small).blob(d)
    shown = json.loads(client.run("show", "team/roundtrip:v1", "--store", pulled, "--json").stdout)
    assert shown["digest"] == lock_digest(small, V1)
    client.run("check", "--store", pulled)
    validate_oci("image-layout-schema.json", (pulled / "oci-layout").read_bytes(), work)
    validate_oci("image-index-schema.json", (pulled / "index.json").read_bytes(), work)
    manifest_bytes = layout.blob(digest)
    validate_oci("image-manifest-schema.json", manifest_bytes, work)
    validate_oci("config-schema.json", layout.blob(json.loads(manifest_bytes)["config"]["digest"]), work)


def test_push_json_and_quiet(small, registry, client):
    digest = Layout(small).manifest_descriptor(V1)["digest"]
    dest = f"{registry.host}/team/json:v1"
    proc = client.run("push", V1, dest, "--store", small, "--json", "--quiet")
    doc = parse_push_json(proc)
    # The registry already holds these blobs in team/roundtrip: they are mounted, not sent.
    assert (doc["destination"], doc["digest"], doc["uploaded"] + doc["mounted"], doc["existing"]) == \
        (dest, digest, len(blob_digests(small, V1)), 0)
    assert doc["mounted"] == len(blob_digests(small, V1))
    assert not SUMMARY.search(text(proc.stderr)), text(proc.stderr)


# ---- 2. unchanged blobs are not sent again ----------------------------------------

def test_repush_sends_no_blob_and_v2_only_the_changed_layer(small, counting, client):
    v1 = blob_digests(small, V1)
    v2 = blob_digests(small, V2)
    dest1 = f"{counting.host}/team/dedup:v1"
    counting.reset()
    first = parse_push_json(client.run("push", V1, dest1, "--store", small, "--json", "--quiet"))
    assert sorted(counting.committed()) == sorted(v1)
    assert (first["uploaded"], first["existing"]) == (len(v1), 0)

    counting.reset()
    again = parse_push_json(client.run("push", V1, dest1, "--store", small, "--json", "--quiet"))
    assert (again["uploaded"], again["existing"]) == (0, len(v1))
    assert again["digest"] == Layout(small).manifest_descriptor(V1)["digest"]
    assert counting.upload_starts() == [], counting.snapshot()
    assert counting.patches() == [], counting.snapshot()
    assert counting.blob_puts() == [], counting.snapshot()
    assert len(counting.manifest_puts()) <= 1

    counting.reset()
    dest2 = f"{counting.host}/team/dedup:v2"
    second = parse_push_json(client.run("push", V2, dest2, "--store", small, "--json", "--quiet"))
    changed = {v2[0], Layout(small).layer_digests(V2)["rest"]}
    assert sorted(counting.committed()) == sorted(changed), counting.snapshot()
    assert len(counting.upload_starts()) == 2, counting.snapshot()
    assert (second["uploaded"], second["existing"]) == (2, len(v2) - 2)
    puts = counting.manifest_puts()
    assert len(puts) == 1 and puts[0].path == "/v2/team/dedup/manifests/v2" and puts[0].status == 201, puts
    assert second["digest"] == Layout(small).manifest_descriptor(V2)["digest"]


# ---- 3. basic authentication ------------------------------------------------------

def test_basic_auth_login_push_logout(small, basic_registry, client, work):
    host = basic_registry.host
    dest = f"{host}/team/private:v1"
    digest = Layout(small).manifest_descriptor(V1)["digest"]
    c = Client(work / "basic-client")

    proc = c.run("push", V1, dest, "--store", small, check=False)
    assert proc.returncode == 5, text(proc.stderr)
    assert host in text(proc.stderr)

    proc = c.run("login", host, "-u", "alice", "--password-stdin", input=b"wrong\n", check=False)
    assert proc.returncode == 5, text(proc.stderr)
    assert host in text(proc.stderr)
    assert not c.auth_file.exists() or host not in json.loads(c.auth_file.read_bytes()).get("auths", {})
    proc = c.run("login", host, "-u", "alice", "-p", "wrong", check=False)
    assert proc.returncode == 5, text(proc.stderr)

    c.run("login", host, "-u", "alice", "--password-stdin", input=b"s3cret-A\n")
    assert stat.S_IMODE(c.auth_file.stat().st_mode) == 0o600
    auths = json.loads(c.auth_file.read_bytes())["auths"]
    assert base64.b64decode(auths[host]["auth"]) == b"alice:s3cret-A"

    proc = c.run("push", V1, dest, "--store", small)
    assert text(proc.stdout) == f"{dest} {digest}\n"
    pulled = work / "basic-pulled"
    assert text(c.run("pull", dest, "--store", pulled).stdout) == f"team/private:v1 {digest}\n"
    c.run("check", "--store", pulled)

    c.run("logout", host)
    assert not c.auth_file.exists() or host not in json.loads(c.auth_file.read_bytes()).get("auths", {})
    proc = c.run("pull", dest, "--store", work / "basic-pulled-2", check=False)
    assert proc.returncode == 5, text(proc.stderr)

    creds = {"ENVSNAP_REGISTRY_USER": "alice", "ENVSNAP_REGISTRY_PASSWORD": "s3cret-A"}
    proc = c.run("push", V1, f"{host}/team/from-env:v1", "--store", small, env=creds)
    assert text(proc.stdout) == f"{host}/team/from-env:v1 {digest}\n"
    proc = c.run("push", V1, f"{host}/team/from-env:v1", "--store", small, check=False,
                 env={"ENVSNAP_REGISTRY_USER": "alice", "ENVSNAP_REGISTRY_PASSWORD": "nope"})
    assert proc.returncode == 5, text(proc.stderr)


# ---- 4. token authentication ------------------------------------------------------

def test_token_auth_login_push_pull(small, token_registry, token_server, work):
    host = token_registry.host
    ca = str(token_server.cert)
    dest = f"{host}/team/tok:v1"
    digest = Layout(small).manifest_descriptor(V1)["digest"]
    c = Client(work / "token-client")

    proc = c.run("push", V1, dest, "--store", small, "--ca-cert", ca, check=False)
    assert proc.returncode == 5, text(proc.stderr)

    before = len(token_server.requests)
    proc = c.run("login", host, "-u", "bob", "--password-stdin", input=b"hunter2-B\n", check=False)
    assert proc.returncode != 0, "login trusted a token server whose certificate it cannot verify"
    assert [r for r in token_server.requests[before:] if r[0] == "bob"] == []

    proc = c.run("login", host, "-u", "bob", "--password-stdin", "--ca-cert", ca, input=b"wrong\n", check=False)
    assert proc.returncode == 5, text(proc.stderr)

    c.run("login", host, "-u", "bob", "--password-stdin", "--ca-cert", ca, input=b"hunter2-B\n")
    assert stat.S_IMODE(c.auth_file.stat().st_mode) == 0o600
    assert host in json.loads(c.auth_file.read_bytes())["auths"]

    token_server.requests.clear()
    proc = c.run("push", V1, dest, "--store", small, "--ca-cert", ca)
    assert text(proc.stdout) == f"{dest} {digest}\n"
    granted = [r for r in token_server.requests if r[0] == "bob" and r[2] == 200]
    assert any("repository:team/tok:" in s and "push" in s for r in granted for s in r[1]), token_server.requests

    pulled = work / "token-pulled"
    proc = c.run("pull", dest, "--store", pulled, "--ca-cert", ca)
    assert text(proc.stdout) == f"team/tok:v1 {digest}\n"
    shown = json.loads(c.run("show", "team/tok:v1", "--store", pulled, "--json").stdout)
    assert shown["digest"] == lock_digest(small, V1)

    other = Client(work / "token-client-2")
    proc = other.run("pull", dest, "--store", work / "token-pulled-2", "--ca-cert", ca, check=False,
                     env={"ENVSNAP_REGISTRY_USER": "bob", "ENVSNAP_REGISTRY_PASSWORD": "wrong"})
    assert proc.returncode == 5, text(proc.stderr)
    c.run("logout", host)
    assert host not in (json.loads(c.auth_file.read_bytes()).get("auths", {}) if c.auth_file.exists() else {})


# ---- 5. faults --------------------------------------------------------------------

@pytest.fixture(scope="module")
def big(work, client):
    """A store holding big/app:v1: 8 MiB of random bytes in base-os, 32 MiB in rest."""
    root = make_root(work / "big-root",
                     rest_files={"srv/big.bin": random_bytes(3, 32 << 20)},
                     base_files={"usr/share/base-files/blob.bin": random_bytes(2, 8 << 20)})
    store = work / "big-store"
    client.run("capture", root, "-t", BIG, "--store", store, "--quiet", timeout=600)
    return store


def test_registry_killed_mid_push_then_push_sends_only_what_is_missing(big, client, work):
    reg = Registry(work / "kill-registry")
    proxy = Proxy(reg.port, throttle=8 << 20)
    try:
        all_blobs = blob_digests(big, BIG)
        layers = set(all_blobs[1:])
        dest = f"{proxy.host}/team/big:v1"
        proc = client.start("push", BIG, dest, "--store", big, "--json", "--quiet")
        killed = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = set(proxy.committed()) & layers
            if done and layers - done:
                reg.kill()
                killed = True
                break
            time.sleep(0.02)
        if not killed:
            proc.kill()
            finish(proc)
            pytest.fail(f"the push ended (or hung) before one layer was committed and another was not: "
                        f"{proxy.snapshot()}")
        rc, out, err = finish(proc)
        assert rc == 4, f"exit {rc}\n{text(err)}"

        reg.start()
        present = [d for d in all_blobs if reg.has_blob("team/big", d)]
        missing = [d for d in all_blobs if d not in present]
        assert set(present) & layers and set(missing) & layers, (present, missing)

        proxy.reset()
        proxy.throttle = None
        doc = parse_push_json(client.run("push", BIG, dest, "--store", big, "--json", "--quiet"))
        assert sorted(proxy.committed()) == sorted(missing), proxy.snapshot()
        sent = {e.query for e in proxy.blob_puts()}
        for d in present:
            assert [e.status for e in proxy.heads(d)][-1:] == [200], proxy.snapshot()
            assert not any(d.replace(":", "%3A") in q or d in q for q in sent), d
        assert (doc["uploaded"], doc["existing"]) == (len(missing), len(present))
        assert doc["digest"] == Layout(big).manifest_descriptor(BIG)["digest"]
        assert reg.manifest_digest("team/big", "v1") == doc["digest"]
    finally:
        proxy.stop()
        reg.stop()


def test_corrupt_blob_is_refused(small, registry, pushed_v1, client, work):
    _, digest = pushed_v1
    rest = Layout(small).layer_digests(V1)["rest"]
    proxy = Proxy(registry.port, corrupt=rest)
    try:
        store = work / "corrupt-pulled"
        proc = client.run("pull", f"{proxy.host}/team/small:v1", "--store", store, check=False)
        assert proc.returncode == 6, text(proc.stderr)
        assert proxy.corrupted >= 1
        assert rest in text(proc.stderr)
        assert text(proc.stdout) == ""
        assert not Layout(store).blob_path(rest).exists()
        assert "team/small:v1" not in tags(store)
        assert_store_clean(client, store)
    finally:
        proxy.stop()


def test_truncated_blob_is_retried_or_refused(small, registry, pushed_v1, client, work):
    _, digest = pushed_v1
    rest = Layout(small).layer_digests(V1)["rest"]
    proxy = Proxy(registry.port, truncate=rest)
    try:
        store = work / "truncated-pulled"
        proc = client.run("pull", f"{proxy.host}/team/small:v1", "--store", store, check=False)
        assert proxy.truncated >= 1
        assert proc.returncode in (0, 4, 6), f"exit {proc.returncode}\n{text(proc.stderr)}"
        if proc.returncode == 0:
            assert text(proc.stdout) == f"team/small:v1 {digest}\n"
            assert Layout(store).blob(rest) == Layout(small).blob(rest)
            assert Layout(store).manifest_descriptor("team/small:v1")["digest"] == digest
        else:
            assert rest in text(proc.stderr) or "team/small" in text(proc.stderr), text(proc.stderr)
            assert not Layout(store).blob_path(rest).exists()
            assert "team/small:v1" not in tags(store)
        assert_store_clean(client, store)
    finally:
        proxy.stop()


def test_bad_reference_and_unreachable_registry(small, client, work):
    proc = client.run("push", V1, "127.0.0.1:5000/UPPER case:v1", "--store", small, check=False)
    assert proc.returncode == 2, text(proc.stderr)
    proc = client.run("pull", "127.0.0.1:5000/team/x:bad tag!", "--store", work / "bad-ref", check=False)
    assert proc.returncode == 2, text(proc.stderr)
    port = free_port()
    proc = client.run("pull", f"127.0.0.1:{port}/team/x:v1", "--store", work / "unreachable", check=False)
    assert proc.returncode == 4, text(proc.stderr)
    assert f"127.0.0.1:{port}" in text(proc.stderr)


# ---- 6. skopeo on either side -----------------------------------------------------

def test_envsnap_pulls_what_skopeo_pushed(small, registry, client, work):
    src = f"docker://{registry.host}/skopeo/app:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{small}:{V1}", src, tmpdir=work)
    remote = json.loads(skopeo("inspect", "--tls-verify=false", src, tmpdir=work).stdout)
    store = work / "from-skopeo"
    proc = client.run("pull", f"{registry.host}/skopeo/app:v1", "--store", store)
    assert text(proc.stdout) == f"skopeo/app:v1 {remote['Digest']}\n"
    shown = json.loads(client.run("show", "skopeo/app:v1", "--store", store, "--json").stdout)
    assert shown["digest"] == lock_digest(small, V1)
    client.run("check", "--store", store)


def test_skopeo_reads_what_envsnap_pushed(small, registry, client, work):
    dest = f"{registry.host}/team/app:v1"
    digest = Layout(small).manifest_descriptor(V1)["digest"]
    client.run("push", V1, dest, "--store", small, "--quiet")
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dest}", tmpdir=work).stdout)
    assert info["Digest"] == digest
    assert info["Labels"]["dev.envsnap.lock.digest"] == lock_digest(small, V1)
    assert json.loads(info["Labels"]["dev.envsnap.lock"]) == \
        json.loads(Layout(small).config(V1)["config"]["Labels"]["dev.envsnap.lock"])
    out = work / "skopeo-out"
    skopeo("copy", "--src-tls-verify=false", f"docker://{dest}", f"oci:{out}:x", tmpdir=work)
    assert Layout(out).manifest_descriptor("x")["digest"] == digest
    for d in blob_digests(small, V1):
        Layout(out).blob(d)


# ---- 7. pull by digest ------------------------------------------------------------

def test_pull_by_digest(registry, pushed_v1, client, small, work):
    _, digest = pushed_v1
    store = work / "pinned"
    proc = client.run("pull", f"{registry.host}/team/small@{digest}", "-t", "local/app:pinned", "--store", store)
    assert text(proc.stdout) == f"local/app:pinned {digest}\n"
    assert Layout(store).manifest_descriptor("local/app:pinned")["digest"] == digest
    assert json.loads(client.run("show", "local/app:pinned", "--store", store, "--json").stdout)["digest"] == \
        lock_digest(small, V1)
    missing = "sha256:" + "0" * 64
    proc = client.run("pull", f"{registry.host}/team/small@{missing}", "-t", "local/app:none",
                      "--store", store, check=False)
    assert proc.returncode != 0 and "local/app:none" not in tags(store), text(proc.stderr)
