"""Secrets never reach the lock: environment variables that look secret are redacted,
credentials in URLs and in the project's git remote are removed. The project section
records the commit and whether the tree is dirty."""

import re
import subprocess

import pytest

from conftest import capture_proc

SECRETS = ["hf_secretvalue123", "awsSECRET456", "pw789", "pass789x"]
FILE_SECRETS = ["hf_filetoken999", "urlpw555"]
REMOTE = "https://user:pass789x@example.invalid/repo.git"
REDACTED = "<redacted>"


def git(repo, *args):
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(repo),
           "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
           "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60).stdout.decode().strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    repo = tmp_path_factory.mktemp("project") / "yolo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('train')\n")
    (repo / "README").write_text("readme\n")
    git(repo, "add", "train.py", "README")
    git(repo, "commit", "-q", "-m", "initial")
    git(repo, "remote", "add", "origin", REMOTE)
    return repo


def live_capture(project, nvml_env):
    env = {"HF_TOKEN": "hf_secretvalue123", "AWS_SECRET_ACCESS_KEY": "awsSECRET456",
           "CUDA_VISIBLE_DEVICES": "0", "NCCL_DEBUG": "INFO", **nvml_env}
    return capture_proc("/", "--env", "MY_PASSWORD=pw789", "--project", project, env=env)


def assert_no_secret(proc, secrets):
    for secret in secrets:
        assert secret.encode() not in proc.stdout, f"{secret} leaked into the lock"
        assert secret.encode() not in proc.stderr, f"{secret} leaked into stderr"


def test_live_capture_redacts(project, nvml_env):
    lock, proc = live_capture(project, nvml_env)
    assert_no_secret(proc, SECRETS)
    env = lock["lock"]["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["NCCL_DEBUG"] == "INFO"
    assert env["MY_PASSWORD"] == REDACTED
    for name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        assert env.get(name, REDACTED) == REDACTED, name


def test_clean_project(project, nvml_env):
    lock, _ = live_capture(project, nvml_env)
    assert lock["lock"]["project"] == {
        "path": str(project),
        "commit": git(project, "rev-parse", "HEAD"),
        "branch": "main",
        "remote": "https://example.invalid/repo.git",
        "dirty": False,
    }


def test_dirty_project(project, nvml_env):
    head = git(project, "rev-parse", "HEAD")
    original = (project / "train.py").read_text()
    try:
        (project / "train.py").write_text(original + "print('changed')\n")
        first, _ = live_capture(project, nvml_env)
        again, _ = live_capture(project, nvml_env)
        (project / "notes.txt").write_text("untracked\n")
        untracked, proc = live_capture(project, nvml_env)
    finally:
        (project / "train.py").write_text(original)
        (project / "notes.txt").unlink(missing_ok=True)
    for lock in (first, again, untracked):
        p = lock["lock"]["project"]
        assert p["commit"] == head
        assert p["dirty"] is True
        assert re.match(r"^sha256:[0-9a-f]{64}$", p["diff_digest"])
    assert first["lock"]["project"]["diff_digest"] == again["lock"]["project"]["diff_digest"]
    assert untracked["lock"]["project"]["diff_digest"] != first["lock"]["project"]["diff_digest"]
    assert_no_secret(proc, SECRETS)
    # Back to the committed state: clean again.
    clean, _ = live_capture(project, nvml_env)
    assert clean["lock"]["project"]["dirty"] is False
    assert "diff_digest" not in clean["lock"]["project"]


def test_other_root_env_file(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    env_file = tmp_path / "train.env"
    env_file.write_text("OMP_NUM_THREADS=8\n"
                        "HF_TOKEN=hf_filetoken999\n"
                        "TORCH_HUB_URL=https://bob:urlpw555@hub.example.invalid/x\n")
    lock, proc = capture_proc(root, "--env-file", env_file,
                              env={"CUDA_VISIBLE_DEVICES": "7", "NCCL_DEBUG": "WARN",
                                   "HF_TOKEN": "hf_secretvalue123"})
    assert_no_secret(proc, FILE_SECRETS + ["hf_secretvalue123"])
    env = lock["lock"]["env"]
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["HF_TOKEN"] == REDACTED
    assert env["TORCH_HUB_URL"] == "https://<redacted>@hub.example.invalid/x"
    # Another root never takes the capturing process's environment.
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert "NCCL_DEBUG" not in env
    assert set(env) == {"OMP_NUM_THREADS", "HF_TOKEN", "TORCH_HUB_URL"}
