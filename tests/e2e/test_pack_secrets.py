"""Secrets never reach an image: credential files are left out, /etc/shadow has its
passwords locked, machine-id is emptied and URL credentials are removed from pip.conf
and .condarc. The check reads every layer's bytes, not only the restored tree."""

import gzip
import io
import json
import os
import tarfile

import pytest

from conftest import Layout, envsnap

HASH = "$6$saltsalt$Qm9vYmFyYmF6cXV4UXVpY2tCcm93bkZveEp1bXBzT3ZlclRoZUxhenlEb2dzUGxlYXNlMTIzNDU2"
SECRETS = {
    "root/.ssh/id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-ssh-key-material-1\n",
    "root/.docker/config.json": '{"auths":{"r.example":{"auth":"c2VjcmV0LWRvY2tlci0y"}}}',
    "root/.netrc": "machine host login me password secret-netrc-3\n",
    "home/u/.git-credentials": "https://u:secret-gitcred-4@host\n",
    "root/.aws/credentials": "[default]\naws_secret_access_key = secret-aws-5\n",
    "root/.config/gcloud/credentials.db": "secret-gcloud-6",
    "root/.kube/config": "token: secret-kube-7\n",
    "root/.cache/huggingface/token": "hf_secret-hf-8",
    "home/u/.config/wandb/settings": "api_key = secret-wandb-9\n",
    "etc/ssh/ssh_host_ed25519_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-hostkey-10\n",
}
SANITISED = {
    "etc/shadow": (f"root:{HASH}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
                   "root:!:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"),
    "etc/machine-id": ("0123456789abcdef0123456789abcdef\n", ""),
    "etc/pip.conf": ("[global]\nindex-url = https://me:secret-pip-11@pypi.internal/simple\n",
                     "[global]\nindex-url = https://pypi.internal/simple\n"),
    "root/.condarc": ("channels:\n  - https://me:secret-conda-12@conda.internal/main\n",
                      "channels:\n  - https://conda.internal/main\n"),
}
SECRET_VALUES = [b"secret-ssh-key-material-1", b"c2VjcmV0LWRvY2tlci0y", b"secret-netrc-3", b"secret-gitcred-4",
                 b"secret-aws-5", b"secret-gcloud-6", b"secret-kube-7", b"secret-hf-8", b"secret-wandb-9",
                 b"secret-hostkey-10", b"secret-pip-11", b"secret-conda-12", HASH.encode(),
                 b"0123456789abcdef0123456789abcdef"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    base = tmp_path_factory.mktemp("secrets")
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    (root / "etc/ssh").mkdir()
    (root / "etc/ssh/ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA public\n")
    (root / "srv").mkdir()
    (root / "srv/keep.txt").write_text("kept\n")
    for rel, content in SECRETS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    for rel, (content, _) in SANITISED.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    os.chmod(root / "etc/shadow", 0o640)
    store = base / "store"
    envsnap("capture", root, "-t", "secrets/test:v1", "--store", store, "--quiet")
    dry = json.loads(envsnap("capture", root, "--dry-run", "--json", "--quiet", "--store", store).stdout)
    restored = base / "restored"
    envsnap("restore", "secrets/test:v1", restored, "--store", store)
    return root, store, restored, dry


def test_credential_files_are_left_out(image):
    _, _, restored, dry = image
    excluded = {e["path"]: e["reason"] for e in dry["excluded"]}
    for rel in SECRETS:
        assert not (restored / rel).exists(), rel
        assert any(("/" + rel).startswith(p) for p in excluded), f"dry-run does not list /{rel}"
    assert (restored / "etc/ssh/ssh_host_ed25519_key.pub").exists()
    assert (restored / "srv/keep.txt").read_text() == "kept\n"


def test_files_are_sanitised_in_place(image):
    _, _, restored, dry = image
    listed = {s["path"] for s in dry["sanitised"]}
    for rel, (_, expected) in SANITISED.items():
        assert (restored / rel).read_text() == expected, rel
        assert "/" + rel in listed
    assert oct((restored / "etc/shadow").stat().st_mode & 0o777) == "0o640"


def test_no_secret_value_in_any_layer(image):
    _, store, _, _ = image
    layout = Layout(store)
    blobs = [l["digest"] for l in layout.manifest("secrets/test:v1")["layers"]]
    blobs.append(layout.manifest("secrets/test:v1")["config"]["digest"])
    for digest in blobs:
        data = layout.blob(digest)
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        for value in SECRET_VALUES:
            assert value not in data, f"{value!r} found in blob {digest}"
