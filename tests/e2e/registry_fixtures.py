"""Registries, a token server and proxies for the push/pull end-to-end tests.

Everything listens on 127.0.0.1 at ports picked free at run time. The registry is
Debian's docker-registry (distribution 2.8), started and stopped by PID; the token
server and the proxies are threads of the test process. Nothing reads stdin, nothing
touches the host's registry configuration.
"""

import base64
import http.client
import http.server
import json
import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from conftest import ENVSNAP_BIN, base_env, text
from engines import stop_pid

REGISTRY_BIN = "/usr/bin/docker-registry"
HTPASSWD = "/usr/bin/htpasswd"
OPENSSL = "/usr/bin/openssl"

TOKEN_SERVICE = "envsnap-test"
TOKEN_ISSUER = "envsnap-test-issuer"

# Hop-by-hop headers and the framing ones the proxy sets itself.
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "content-length"}


def need(path, package):
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing (Debian package {package})")
    return path


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url, method="GET", timeout=5.0, context=None):
    """The status of a plain request, or None when nothing answers."""
    u = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    kw = {"context": context} if u.scheme == "https" else {}
    conn = cls(u.hostname, u.port, timeout=timeout, **kw)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


# ---- envsnap with credentials kept inside the test ---------------------------------

class Client:
    """Runs envsnap with an auth file, XDG_CONFIG_HOME and DOCKER_CONFIG of the test's
    own, and none of the runner's registry credentials."""

    def __init__(self, home):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.auth_file = self.home / "auth.json"
        self.env = {
            "ENVSNAP_AUTH_FILE": str(self.auth_file),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "DOCKER_CONFIG": str(self.home / "docker"),
            "REGISTRY_AUTH_FILE": str(self.home / "containers-auth.json"),
            "HOME": str(self.home),
            "ENVSNAP_REGISTRY_USER": None,
            "ENVSNAP_REGISTRY_PASSWORD": None,
            "SSL_CERT_FILE": None,
            "CURL_CA_BUNDLE": None,
            "http_proxy": None, "https_proxy": None, "HTTP_PROXY": None, "HTTPS_PROXY": None,
            "all_proxy": None, "ALL_PROXY": None, "no_proxy": None, "NO_PROXY": None,
        }

    def run(self, *args, input=None, env=None, check=True, timeout=300):
        """envsnap ARGS; `input` (bytes) is its stdin, else /dev/null."""
        if not ENVSNAP_BIN.is_file():
            pytest.fail(f"envsnap binary not found at {ENVSNAP_BIN} (set ENVSNAP_BIN)")
        merged = dict(self.env)
        merged.update(env or {})
        cmd = [str(ENVSNAP_BIN), *[os.fspath(a) for a in args]]
        proc = subprocess.run(cmd, env=base_env(merged),
                              input=input if input is not None else None,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, cwd="/")
        if check and proc.returncode != 0:
            pytest.fail(f"{cmd} exited {proc.returncode}\nstderr:\n{text(proc.stderr)}")
        return proc

    def start(self, *args, env=None):
        """envsnap ARGS in the background (a Popen, stdout/stderr to files in home)."""
        merged = dict(self.env)
        merged.update(env or {})
        tag = uuid.uuid4().hex[:8]
        out = open(self.home / f"bg-{tag}.out", "w+b")
        err = open(self.home / f"bg-{tag}.err", "w+b")
        proc = subprocess.Popen([str(ENVSNAP_BIN), *[os.fspath(a) for a in args]], env=base_env(merged),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd="/")
        proc.out_file, proc.err_file = out, err
        return proc


def finish(proc, timeout=300):
    """Waits for a Client.start process: (returncode, stdout bytes, stderr bytes)."""
    rc = proc.wait(timeout=timeout)
    proc.out_file.seek(0)
    proc.err_file.seek(0)
    out, err = proc.out_file.read(), proc.err_file.read()
    proc.out_file.close()
    proc.err_file.close()
    return rc, out, err


# ---- the registry ------------------------------------------------------------------

class Registry:
    """One docker-registry process: filesystem storage in `work`, no TLS. `auth` is
    None, {"htpasswd": {...}} or {"token": {...}} (the config's auth section)."""

    def __init__(self, work, auth=None, port=None):
        need(REGISTRY_BIN, "docker-registry")
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.storage = self.work / "storage"
        self.storage.mkdir(exist_ok=True)
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.config = self.work / "config.yml"
        doc = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": "envsnap-e2e-fixed-secret"},
        }
        if auth:
            doc["auth"] = auth
        # JSON is YAML: no YAML writer needed.
        self.config.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        self.proc = None
        self.log = self.work / "registry.log"
        self.start()

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, env=env, cwd=str(self.work))
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"docker-registry exited {self.proc.returncode}:\n{self.log_tail()}")
            if http_status(f"http://{self.host}/v2/", timeout=1.0) in (200, 401):
                return
            time.sleep(0.1)
        pytest.fail(f"docker-registry did not answer GET /v2/ within 30 s:\n{self.log_tail()}")

    def kill(self):
        """SIGKILL by PID, and reap."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            stop_pid(self.proc.pid, grace=10.0, popen=self.proc)

    def log_tail(self, n=4000):
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def has_blob(self, repo, digest):
        """HEAD of a blob straight at the registry (no auth registries only)."""
        return http_status(f"http://{self.host}/v2/{repo}/blobs/{digest}", method="HEAD") == 200

    def manifest_digest(self, repo, ref):
        """Docker-Content-Digest of a manifest, straight at the registry (no auth)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ", ".join([
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json"])})
            resp = conn.getresponse()
            resp.read()
            return resp.getheader("Docker-Content-Digest") if resp.status == 200 else None
        finally:
            conn.close()


def htpasswd_line(user, password):
    need(HTPASSWD, "apache2-utils")
    proc = subprocess.run([HTPASSWD, "-Bbn", user, password], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60, check=True)
    return proc.stdout.decode().strip() + "\n"


def basic_auth_registry(work, users):
    """A registry with htpasswd basic auth; `users` maps user -> password."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "htpasswd"
    path.write_text("".join(htpasswd_line(u, p) for u, p in users.items()), encoding="utf-8")
    return Registry(work, auth={"htpasswd": {"realm": "envsnap-test-realm", "path": str(path)}})


# ---- the token server -------------------------------------------------------------

def make_cert(work):
    """A self-signed RSA certificate for 127.0.0.1: (cert.pem, key.pem)."""
    need(OPENSSL, "openssl")
    work = Path(work)
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=True)
    return cert, key


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(claims, cert, key):
    """A JWT signed RS256 by `key` (openssl dgst), its certificate in x5c."""
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
    signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     _b64url(json.dumps(claims, separators=(",", ":")).encode()))
    sig = subprocess.run([OPENSSL, "dgst", "-sha256", "-sign", str(key)], input=signing_input.encode(),
                         capture_output=True, timeout=60, check=True).stdout
    return signing_input + "." + _b64url(sig)


class TokenServer:
    """The token service of docker's token authentication over HTTPS: GET (and the
    OAuth2 password grant by POST) with basic auth; grants pull and push on every
    repository it is asked for to a known user, an empty access list to anonymous
    callers, and 401 to a wrong password. `requests` records (user, scopes, status)."""

    def __init__(self, work, users):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = make_cert(self.work)
        self.users = dict(users)
        self.requests = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                q = urllib.parse.urlsplit(self.path)
                params = urllib.parse.parse_qs(q.query)
                self.answer(q.path, params, self.basic_user())

            def do_POST(self):
                q = urllib.parse.urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(n).decode(errors="replace"))
                creds = self.basic_user()
                if form.get("grant_type", [""])[0] == "password":
                    creds = (form.get("username", [""])[0], form.get("password", [""])[0])
                self.answer(q.path, form, creds)

            def basic_user(self):
                h = self.headers.get("Authorization", "")
                if not h.lower().startswith("basic "):
                    return None
                try:
                    user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
                except ValueError:
                    return ("", "")
                return (user, pw)

            def answer(self, path, params, creds):
                scopes = params.get("scope", [])
                if path != "/token":
                    return self.reply(404, {"errors": [{"code": "NOT_FOUND"}]}, None, scopes)
                if params.get("service", [TOKEN_SERVICE])[0] != TOKEN_SERVICE:
                    return self.reply(400, {"errors": [{"code": "BAD_SERVICE"}]}, None, scopes)
                if creds is not None and server.users.get(creds[0]) != creds[1]:
                    return self.reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                                        "message": "wrong user name or password"}]},
                                      creds[0], scopes)
                user = creds[0] if creds else ""
                access = []
                if creds:
                    for scope in " ".join(scopes).split():
                        parts = scope.split(":")
                        if len(parts) == 3 and parts[0] == "repository":
                            acts = [a for a in parts[2].split(",") if a in ("pull", "push")]
                            access.append({"type": "repository", "name": parts[1], "actions": acts})
                now = int(time.time())
                claims = {"iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE, "exp": now + 600,
                          "nbf": now - 60, "iat": now, "jti": uuid.uuid4().hex, "access": access}
                token = sign_jwt(claims, server.cert, server.key)
                self.reply(200, {"token": token, "access_token": token, "expires_in": 600,
                                 "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))},
                           user, scopes)

            def reply(self, status, body, user, scopes):
                with server.lock:
                    server.requests.append((user, list(scopes), status))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="envsnap-test-token"')
                self.end_headers()
                self.wfile.write(data)

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.realm = f"https://127.0.0.1:{self.port}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def registry_auth(self):
        """The auth section of a registry that trusts this server."""
        return {"token": {"realm": self.realm, "service": TOKEN_SERVICE, "issuer": TOKEN_ISSUER,
                          "rootcertbundle": str(self.cert)}}

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- proxies ----------------------------------------------------------------------

_BLOB_GET = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")


class Event:
    __slots__ = ("method", "path", "query", "status", "sent")

    def __init__(self, method, path, query, status, sent):
        self.method, self.path, self.query, self.status, self.sent = method, path, query, status, sent

    def __repr__(self):
        return f"{self.method} {self.path}{'?' + self.query if self.query else ''} -> {self.status} ({self.sent} B)"


class Proxy:
    """A threaded HTTP/1.1 reverse proxy in front of `upstream_port` that records every
    request. The Host header is passed on unchanged, so the registry's Location headers
    point back at the proxy. Request bodies are read at most `throttle` bytes/s.

    `corrupt` = a digest: a 200 answer to GET .../blobs/<digest> has one byte flipped.
    `truncate` = a digest: the first 200 answer to that GET announces the full length,
    sends half and closes the connection. When the upstream cannot be reached the
    client's connection is closed without an answer, as a dead host would."""

    def __init__(self, upstream_port, throttle=None, corrupt=None, truncate=None):
        self.upstream_port = upstream_port
        self.throttle = throttle
        self.corrupt = corrupt
        self.truncate = truncate
        self.truncated = 0
        self.corrupted = 0
        self.events = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                self.forward()

            do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

            def read_body(self):
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        parts.append(self.read_exact(size))
                        self.rfile.readline()
                    return b"".join(parts)
                return self.read_exact(int(self.headers.get("Content-Length") or 0))

            def read_exact(self, n):
                out = bytearray()
                start = time.monotonic()
                while len(out) < n:
                    chunk = self.rfile.read(min(65536, n - len(out)))
                    if not chunk:
                        raise ConnectionError("client closed mid-body")
                    out += chunk
                    if proxy.throttle:
                        ahead = len(out) / proxy.throttle - (time.monotonic() - start)
                        if ahead > 0:
                            time.sleep(ahead)
                return bytes(out)

            def drop(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def forward(self):
                u = urllib.parse.urlsplit(self.path)
                try:
                    body = self.read_body()
                except (ConnectionError, ValueError):
                    return self.drop()
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP]
                up = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                try:
                    up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in headers:
                        up.putheader(k, v)
                    if body or self.command in ("PUT", "POST", "PATCH"):
                        up.putheader("Content-Length", str(len(body)))
                    up.endheaders(body if body else None)
                    resp = up.getresponse()
                    data = resp.read() if self.command != "HEAD" else b""
                    rheaders = resp.getheaders()
                    status = resp.status
                except (OSError, http.client.HTTPException):
                    proxy.record(self.command, u.path, u.query, None, len(body))
                    return self.drop()
                finally:
                    up.close()
                proxy.record(self.command, u.path, u.query, status, len(body))

                m = _BLOB_GET.match(u.path)
                cut = None
                if m and self.command == "GET" and status == 200 and data:
                    if proxy.corrupt == m.group(2):
                        flipped = bytearray(data)
                        flipped[len(flipped) // 2] ^= 0xFF
                        data = bytes(flipped)
                        with proxy.lock:
                            proxy.corrupted += 1
                    if proxy.truncate == m.group(2):
                        with proxy.lock:
                            if proxy.truncated == 0:
                                cut = len(data) // 2
                            proxy.truncated += 1
                try:
                    self.send_response_only(status, resp.reason)
                    for k, v in rheaders:
                        if k.lower() not in _HOP:
                            self.send_header(k, v)
                    if self.command == "HEAD":
                        cl = resp.getheader("Content-Length")
                        if cl is not None:
                            self.send_header("Content-Length", cl)
                    elif status not in (204, 304) or data:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if cut is not None:
                        self.wfile.write(data[:cut])
                        self.wfile.flush()
                        return self.drop()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError:
                    return self.drop()

        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def record(self, method, path, query, status, sent):
        with self.lock:
            self.events.append(Event(method, path, query, status, sent))

    def reset(self):
        with self.lock:
            self.events = []
            self.truncated = 0
            self.corrupted = 0

    def snapshot(self):
        with self.lock:
            return list(self.events)

    # What a push did, read from the events.

    def upload_starts(self):
        """POST .../blobs/uploads/ that are not cross-repository mounts."""
        return [e for e in self.snapshot() if e.method == "POST" and "/blobs/uploads" in e.path
                and "mount=" not in e.query]

    def patches(self):
        return [e for e in self.snapshot() if e.method == "PATCH" and "/blobs/uploads/" in e.path]

    def committed(self):
        """Digests whose upload the registry accepted (201): the closing PUT ?digest=, or
        a monolithic POST ?digest=."""
        out = []
        for e in self.snapshot():
            if e.method in ("PUT", "POST") and "/blobs/uploads" in e.path and e.status == 201:
                d = urllib.parse.parse_qs(e.query).get("digest")
                if d:
                    out.append(d[0])
        return out

    def blob_puts(self):
        """Every request that carried a blob's closing digest=, whatever its answer."""
        return [e for e in self.snapshot() if e.method in ("PUT", "POST") and "/blobs/uploads" in e.path
                and "digest=" in e.query]

    def manifest_puts(self):
        return [e for e in self.snapshot() if e.method == "PUT" and "/manifests/" in e.path]

    def heads(self, digest):
        return [e for e in self.snapshot() if e.method == "HEAD" and e.path.endswith("/blobs/" + digest)]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- source roots -----------------------------------------------------------------

OS_RELEASE = ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
              'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n')


def random_bytes(seed, size):
    return random.Random(seed).randbytes(size)


def make_root(root, rest_files, base_files=None):
    """A Debian-like root: /etc/os-release and the files of `base_files` (in-root path ->
    bytes) owned by the dpkg package base-files (so they go to the base-os layer), and
    `rest_files` (in-root path -> bytes) that no package owns (the rest layer)."""
    root = Path(root)
    base = {"etc/os-release": OS_RELEASE.encode(), "etc/debian_version": b"12.5\n"}
    base.update(base_files or {})
    for rel, data in {**base, **rest_files}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    dpkg = root / "var/lib/dpkg"
    (dpkg / "info").mkdir(parents=True, exist_ok=True)
    (dpkg / "status").write_text(
        "Package: base-files\nStatus: install ok installed\nPriority: required\n"
        "Section: admin\nMaintainer: Santiago Vila <sanvila@debian.org>\nArchitecture: amd64\n"
        "Version: 12.4+deb12u5\nDescription: Debian base system miscellaneous files\n\n",
        encoding="utf-8")
    dirs = sorted({"/" + str(Path(rel).parent) for rel in base} - {"/."})
    listed = ["/."]
    for d in dirs:
        parts = d.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/" + "/".join(parts[:i])
            if p not in listed:
                listed.append(p)
    listed += ["/" + rel for rel in sorted(base)]
    (dpkg / "info/base-files.list").write_text("\n".join(listed) + "\n", encoding="utf-8")
    return root
