#!/usr/bin/env python3
"""The client half of scripts/compose-smoke.sh: drives a running compose stack through its
public nginx (127.0.0.1:$SB_PUBLIC_PORT) and stops containers with `docker stop`.

Standard library only (a minimal RFC 6455 client below). Every wait is bounded. Checks:
  1. the registry hands out all 3 socket-server replicas;
  2. two clients on different replicas chat through nginx, history intact;
  3. `docker stop` of one replica: it leaves the registry within seconds, its client
     reconnects to another replica, and no acknowledged (`sent`) message is lost;
  4. `docker stop` of the Redis master container: Sentinel promotes a replica inside the
     Docker network and sends are acknowledged again within 15 s, no service restarted;
     `docker start` brings it back as a replica of the new master (with AUTH);
  5. register/deregister through the public nginx are refused by nginx itself (403; the
     socket servers use nginx's unpublished :8081, where the registry still wants the
     cluster secret), and the /ws/<ip> tunnel only reaches registered socket servers;
  6. Redis and the Sentinels refuse commands without the password (NOAUTH), over the network
     and on loopback, and answer with it (SB_REDIS_PASSWORD from the `redis-secrets` volume);
  7. least privilege (issue 24): each service container holds only its own Redis password;
     the socket server's Redis user cannot read or write the membership mirror (`members:*`),
     nor run admin commands (NOPERM), while the message service's user may write it; the
     services' Sentinel user (`sb-client`) cannot run SENTINEL MONITOR/REMOVE/FAILOVER/SET
     (NOPERM) and a service's Redis user is no Sentinel user at all. Everything above and
     after (chat, a replica stop, the master failover) runs under these users;
  8. nginx's per-address connection limit: one address holding more connections than
     `limit_conn` allows gets 429 for the excess, while a client at another address (a
     container) still gets through, and the flooding address again once it lets go;
  9. per-service credentials (issue 24, item 11): each service's volume holds its own secret,
     every role's hash and the public token key, the registry's alone the private key; the
     socket server's process has no SB_JWT_SECRET, SB_CLUSTER_SECRET or private key; a token
     forged with HS256 keyed by the public key is refused at /ws; the socket server's
     credential gets 403 on the message service's membership route (the manager's gets 200);
     dev tokens are EdDSA (the demo override's dev mode, in the registry alone);
 10. scaling (issue 29): 2 registries and 2 socket managers by `--scale`, each manager with its
     own SB_MANAGER_ID; one manager stopped: sends are acknowledged again through the other
     (Docker's DNS behind one name); a third registry added at run time gets requests from
     nginx (its `resolve`) within seconds;
 11. 5,000 idle WebSockets held for 20 s through nginx to the three socket servers (from the
     SMOKE_SOURCES addresses straight to nginx's container address), every one still open
     and counted by the registry, then released;
 12. app backends (issue 26), through nginx with the API key SMOKE_API_KEY: a user JWT is
     401 on /server, a webhook endpoint registered at the demo's push-gateway-sink (on its
     own `sinks` network, the one subnet allow-listed past the SSRF guard), a group made and
     a message posted through the server API (Idempotency-Key, replay answered alike); the
     sink receives that message's `message.created`, and its Standard Webhooks signature
     verifies under the endpoint's secret; a member who never connects, with a push device
     registered through /api/v1/push/devices, gets one signed push for it.

 13. attachments on the object store (issue 28): an upload ticket from the message service
     names the published Garage port; a browser's CORS preflight to its pre-signed URL from
     the page's origin (http://localhost:PORT) is allowed (its Access-Control-Allow-Origin),
     one from a foreign origin is refused; the upload itself, sent with the page's Origin,
     is stored.

Environment: SB_PUBLIC_PORT, SMOKE_COMPOSE (the docker-compose command line, space separated),
SMOKE_DOCKER (the docker command), SMOKE_SCALE (the --scale options of `up`), SMOKE_NGINX_IP
and SMOKE_SOURCES (nginx's container address and the host's source addresses for step 11),
SMOKE_API_KEY (a server API key the stack was started with, every scope; step 12).
"""

import base64
import hashlib
import hmac
import json
import os
import queue
import resource
import select
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PORT = int(os.environ["SB_PUBLIC_PORT"])
BASE = f"http://127.0.0.1:{PORT}"
COMPOSE = os.environ.get("SMOKE_COMPOSE", "docker-compose").split()
DOCKER = os.environ.get("SMOKE_DOCKER", "docker").split()
T0 = time.monotonic()


def log(msg):
    print(f"smoke-client [{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


# ---- HTTP ------------------------------------------------------------------------------------


def http(method, path, body=None, token=None, headers=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def until(deadline_s, what, fn, interval=0.3):
    """Calls fn() until it returns something truthy, at most deadline_s seconds."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except (OSError, Fail, ValueError) as e:
            last = e
        time.sleep(interval)
    raise Fail(f"timed out after {deadline_s}s waiting for {what} (last: {last!r})")


def token(user):
    status, body = http("POST", "/api/v1/dev/token", {"user_id": user})
    check(status == 200, f"dev token for {user}: {status} {body}")
    return body["token"]


def servers():
    status, body = http("GET", "/api/v1/socket-servers")
    check(status == 200, f"list socket servers: {status} {body}")
    return {s["server_id"]: s["url"] for s in body["servers"]}


def assign():
    status, body = http("GET", "/api/v1/socket-server")
    check(status == 200, f"assign: {status} {body}")
    return body["server_id"], body["url"]


def history(tok, conv):
    status, body = http("GET", f"/api/v1/conversations/{conv}/messages?after_seq=0&limit=500", token=tok)
    check(status == 200, f"history: {status} {body}")
    return body["messages"]


# ---- WebSocket (RFC 6455, client side, text frames) ----------------------------------------


class Ws:
    def __init__(self, url, tok, name):
        self.name = name
        parts = urllib.parse.urlsplit(url)
        check(parts.scheme == "ws", f"{name}: expected a ws:// URL, got {url}")
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        path = f"{parts.path}?token={urllib.parse.quote(tok)}"
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Fail(f"{name}: connection closed during the handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode()
        if " 101 " not in status + " ":
            raise Fail(f"{name}: upgrade refused: {status}")
        self.sock.settimeout(None)
        self.frames = queue.Queue()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._reader, daemon=True).start()

    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _reader(self):
        try:
            text = b""
            while True:
                b0, b1 = self._read_exact(2)
                op, n = b0 & 0x0F, b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", self._read_exact(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", self._read_exact(8))[0]
                payload = self._read_exact(n)
                if op == 0x9:
                    self._send(0xA, payload)
                elif op == 0x8:
                    break
                elif op in (0x1, 0x0):
                    text += payload
                    if b0 & 0x80:
                        self.frames.put(json.loads(text))
                        text = b""
        except (OSError, EOFError, ValueError):
            pass
        self.closed.set()
        self.frames.put(None)

    def _send(self, op, payload):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | op])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self.lock:
            self.sock.sendall(head + mask + body)

    def send(self, obj):
        self._send(0x1, json.dumps(obj).encode())

    def recv(self, timeout):
        """The next JSON frame, or None when the connection closed or nothing came in time."""
        try:
            return self.frames.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def wait_for(self, timeout, pred, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            frame = self.recv(end - time.monotonic())
            if frame is None and self.closed.is_set():
                raise Fail(f"{self.name}: connection closed while waiting for {what}")
            if frame is not None and pred(frame):
                return frame
        raise Fail(f"{self.name}: no {what} within {timeout}s")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect(tok, name, avoid=()):
    """Asks the registry for a server (not one of `avoid`) and connects; returns (server_id, Ws)."""

    def attempt():
        sid, url = assign()
        if sid in avoid:
            return None
        ws = Ws(url, tok, name)
        hello = ws.wait_for(10, lambda f: f.get("type") == "hello", "hello")
        check(hello["server_id"] == sid, f"{name}: hello from {hello['server_id']}, assigned {sid}")
        return sid, ws

    return until(20, f"{name} connected to a server other than {sorted(avoid)}", attempt)


def send_acked(ws, conv, cmid, body, timeout):
    """Sends (and resends the same client_msg_id, idempotent) until `sent`; returns its seq."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ws.send({"type": "send", "conversation_id": conv, "client_msg_id": cmid, "body": body})
        step = time.monotonic() + 2
        while time.monotonic() < min(step, end):
            frame = ws.recv(min(step, end) - time.monotonic())
            if frame is None:
                if ws.closed.is_set():
                    raise Fail(f"{ws.name}: closed while sending {cmid}")
                continue
            if frame.get("type") == "sent" and frame.get("client_msg_id") == cmid:
                return frame["seq"]
    raise Fail(f"{ws.name}: {cmid} not acknowledged within {timeout}s")


# ---- docker ----------------------------------------------------------------------------------


def run(cmd, timeout=60):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise Fail(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout.strip()


def container_ids():
    return run(COMPOSE + ["ps", "-q"]).split()


def start_state():
    """container id -> (restart count, started at), to prove no service was restarted."""
    ids = container_ids()
    fmt = "{{.Id}} {{.RestartCount}} {{.State.StartedAt}}"
    out = run(DOCKER + ["inspect", "-f", fmt] + ids)
    return {line.split()[0]: tuple(line.split()[1:]) for line in out.splitlines()}


def run_any(cmd, timeout=60):
    """stdout + stderr of cmd, whatever its exit status."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return (out.stdout + out.stderr).strip()


# redis-cli with the password: compose/switchboard-entrypoint.sh (mounted into every Redis
# and Sentinel container) reads SB_REDIS_PASSWORD from the secrets volume and exports it as
# REDISCLI_AUTH. Plain `redis-cli` in those containers has no password.
AUTH_CLI = ["switchboard-entrypoint", "redis-cli"]


def sentinel_master(sentinel):
    """The master's address as the Sentinel in container `sentinel` sees it."""
    out = run(DOCKER + ["exec", sentinel] + AUTH_CLI + ["-p", "26379",
                        "sentinel", "get-master-addr-by-name", "switchboard"], timeout=10)
    return out.split()[0] if out else ""


def container_ip(container):
    return run(DOCKER + ["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                         container])


def service_secret(service, name):
    """The secret `name` as the first container of compose service `service` holds it."""
    container = run(COMPOSE + ["ps", "-q", service]).split()[0]
    return run(DOCKER + ["exec", container, "cat", f"/var/lib/switchboard/redis/{name}"], timeout=10)


def redis_as(container, user, password, host, port, *command):
    """redis-cli in `container` (any Redis or Sentinel container), logged in as `user`."""
    return run_any(DOCKER + ["exec", "-e", f"REDISCLI_AUTH={password}", container, "redis-cli",
                             "--user", user, "-h", host, "-p", str(port)] + list(command), timeout=15)


def least_privilege(master, sentinel):
    """7. Each service is its own Redis user with only its key families; its Sentinel user
    may only ask where the master is (issue 24, item 12)."""
    # Each service container has only its own Redis password: no admin password, no other
    # service's, and the volume is read-only for it.
    passwords = {}
    for service in ("registry", "socket-server", "socket-manager", "health-checker",
                    "message-service"):
        container = run(COMPOSE + ["ps", "-q", service]).split()[0]
        out = run_any(DOCKER + ["exec", container, "sh", "-c",
                                "ls -A /var/lib/switchboard/auth /var/lib/switchboard/redis; "
                                "touch /var/lib/switchboard/redis/x 2>&1"], timeout=15)
        check("SB_REDIS" not in out.split("/var/lib/switchboard/redis:")[0]
              and "Read-only file system" in out,
              f"{service}: the credentials volume holds a Redis password, or its own Redis "
              f"volume is writable: {out!r}")
        passwords[service] = service_secret(service, "SB_REDIS_PASSWORD")
    admin = run(DOCKER + ["exec", master, "cat", "/var/lib/switchboard/secrets/SB_REDIS_PASSWORD"])
    check(len(set(passwords.values()) | {admin}) == len(passwords) + 1,
          "two services (or a service and the admin) share a Redis password")

    socket_pw = passwords["socket-server"]
    # The credentials work (so the refusals below are the ACL's, not a bad password) ...
    out = redis_as(sentinel, "sb-socket-server", socket_pw, "redis-master", 6379, "exists", "sb:servers")
    check(out in ("0", "1"), f"sb-socket-server cannot even read the directory: {out!r}")
    # ... but the membership mirror, the counters and admin commands are refused.
    for command in [
        ("set", "sb:members:smoke-intruder", "alice"),
        ("sadd", "sb:members:smoke-intruder", "alice"),
        ("smembers", "sb:members:smoke-intruder"),
        ("set", "sb:members-version:smoke-intruder", "9"),
        ("incr", "sb:seq:smoke-intruder"),
        ("config", "set", "maxmemory", "1"),
        ("replicaof", "10.0.0.1", "6379"),
        ("acl", "setuser", "sb-socket-server", "~*"),
        ("flushall",),
    ]:
        out = redis_as(sentinel, "sb-socket-server", socket_pw, "redis-master", 6379, *command)
        check("NOPERM" in out, f"sb-socket-server ran {' '.join(command)!r}: {out!r}")
    # The mirror's owner may write it (a key no conversation uses, removed again).
    msg_pw = passwords["message-service"]
    out = redis_as(sentinel, "sb-message-service", msg_pw, "redis-master", 6379,
                   "set", "sb:members:smoke-probe", "1")
    check(out == "OK", f"the message service cannot write the membership mirror: {out!r}")
    redis_as(sentinel, "sb-message-service", msg_pw, "redis-master", 6379, "del", "sb:members:smoke-probe")
    log("each service holds only its own Redis password; sb-socket-server gets NOPERM on the "
        "membership mirror, counters and admin commands; sb-message-service writes the mirror")

    # The Sentinels: the services' user asks where the master is, and nothing else.
    client_pw = service_secret("socket-server", "SB_REDIS_SENTINEL_PASSWORD")
    out = redis_as(sentinel, "sb-client", client_pw, "sentinel-2", 26379,
                   "sentinel", "get-master-addr-by-name", "switchboard")
    check(out.split()[:1] == [container_ip(master)],
          f"sb-client cannot ask where the master is: {out!r}")
    for command in [
        ("sentinel", "monitor", "evil", "10.0.0.1", "6379", "2"),
        ("sentinel", "remove", "switchboard"),
        ("sentinel", "failover", "switchboard"),
        ("sentinel", "set", "switchboard", "auth-pass", "stolen"),
        ("sentinel", "reset", "*"),
        ("sentinel", "masters"),
        ("sentinel", "config", "set", "announce-ip", "10.0.0.1"),
    ]:
        out = redis_as(sentinel, "sb-client", client_pw, "sentinel-2", 26379, *command)
        check("NOPERM" in out, f"sb-client ran {' '.join(command)!r} on a Sentinel: {out!r}")
    out = redis_as(sentinel, "sb-socket-server", socket_pw, "sentinel-2", 26379,
                   "sentinel", "monitor", "evil", "10.0.0.1", "6379", "2")
    check("WRONGPASS" in out or "NOAUTH" in out or "NOPERM" in out,
          f"the socket server's Redis user ran SENTINEL MONITOR: {out!r}")
    check(sentinel_master(sentinel) == container_ip(master), "the Sentinels' master moved")
    log("sb-client may only ask where the master is (SENTINEL MONITOR/REMOVE/FAILOVER/SET: "
        "NOPERM); a service's Redis user is refused by the Sentinels")


def dir_listing(container, where):
    """(size by file name, (uid, mode) by file name and '.', raw output) of a directory."""
    out = run_any(DOCKER + ["exec", container, "sh", "-c",
                            f"cd {where} && wc -c * && stat -c '%u %a %n' . *"], timeout=15)
    lines = [line.split() for line in out.splitlines()]
    sizes = {w[1]: w[0] for w in lines if len(w) == 2 and w[1] != "total"}
    modes = {w[2]: (w[0], w[1]) for w in lines if len(w) == 3}
    return sizes, modes, out


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_header(tok):
    return json.loads(base64.urlsafe_b64decode(tok.split(".")[0] + "=="))


def upgrade_status(url, tok):
    """The status line nginx and the socket server answer a WebSocket upgrade with."""
    try:
        ws = Ws(url, tok, "probe")
    except Fail as e:
        return str(e)
    ws.close()
    return "101"


ROLES = ("registry", "socket-server", "socket-manager", "health-checker", "message-service",
         "webhook-dispatcher")
AUTH = "/var/lib/switchboard/auth"


def curl_as(container, role, secret, url):
    """The HTTP status of GET url from `container`, presenting `role` and `secret`."""
    return run_any(DOCKER + ["exec", container, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                             "-H", f"x-cluster-service: {role}", "-H", f"x-cluster-secret: {secret}",
                             url], timeout=15)


def credentials(conv):
    """9. Per-service credentials (issue 24, item 11): each service holds its own secret, the
    callers' hashes and the public token key; only the registry can mint client tokens."""
    secrets, caller_keys = {}, set()
    for role in ROLES:
        container = run(COMPOSE + ["ps", "-q", role]).split()[0]
        sizes, modes, out = dir_listing(container, AUTH)
        expected = {"SB_SERVICE_SECRET", "SB_CALLER_KEYS", "jwt-ed25519.pub.pem"}
        if role == "registry":
            expected.add("jwt-ed25519.pem")
        check(set(sizes) == expected and modes.get(".") == ("10001", "700")
              and all(modes.get(n) == ("10001", "600") for n in expected),
              f"{role}: {AUTH} should hold exactly {sorted(expected)} (uid 10001, modes 700/600): "
              f"{out!r}")
        secrets[role] = run(DOCKER + ["exec", container, "cat", f"{AUTH}/SB_SERVICE_SECRET"])
        caller_keys.add(run(DOCKER + ["exec", container, "cat", f"{AUTH}/SB_CALLER_KEYS"]))
        # What the service process runs with (PID 1 after the entrypoint's exec).
        env = run(DOCKER + ["exec", container, "sh", "-c", "tr '\\0' '\\n' < /proc/1/environ"])
        names = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in env.splitlines() if "=" in line}
        for gone in ("SB_JWT_SECRET", "SB_CLUSTER_SECRET"):
            check(gone not in names, f"{role} runs with {gone} in its environment")
        if role != "webhook-dispatcher":
            check(names.get("SB_SERVICE_SECRET") == secrets[role]
                  and names.get("SB_JWT_PUBLIC_KEY_FILE") == f"{AUTH}/jwt-ed25519.pub.pem",
                  f"{role} does not run with its own SB_SERVICE_SECRET and the public key")
            check(("SB_JWT_PRIVATE_KEY_FILE" in names) == (role == "registry"),
                  f"{role}: SB_JWT_PRIVATE_KEY_FILE is {names.get('SB_JWT_PRIVATE_KEY_FILE')!r}")
        if role != "registry":
            found = run_any(DOCKER + ["exec", container, "sh", "-c",
                                      "grep -rl 'PRIVATE KEY' /var/lib/switchboard /etc 2>/dev/null; true"])
            check(found == "", f"{role} holds a private key: {found!r}")
    check(len(set(secrets.values())) == len(ROLES), "two roles share a secret")
    check(len(caller_keys) == 1, "the services disagree on SB_CALLER_KEYS")
    keys = dict(pair.split("=", 1) for pair in caller_keys.pop().split(","))
    check(keys == {r: hashlib.sha256(secrets[r].encode()).hexdigest() for r in ROLES},
          f"SB_CALLER_KEYS is not every role's SHA-256: {sorted(keys)}")
    log("each service holds its own secret, every role's hash and the public key; only the "
        "registry holds the private key; no process has SB_JWT_SECRET or SB_CLUSTER_SECRET")

    # Client tokens are EdDSA; one forged with HS256 keyed by the public key (the classic
    # algorithm confusion) or by its DER is refused at the socket servers, as is one with
    # alg none.
    alice = token("alice")
    check(jwt_header(alice).get("alg") == "EdDSA", f"dev tokens are {jwt_header(alice)}, not EdDSA")
    socket = run(COMPOSE + ["ps", "-q", "socket-server"]).split()[0]
    public = run(DOCKER + ["exec", socket, "cat", f"{AUTH}/jwt-ed25519.pub.pem"]) + "\n"
    der = base64.b64decode("".join(public.strip().splitlines()[1:-1]))
    now = int(time.time())
    claims = b64url(json.dumps({"sub": "mallory", "iat": now, "exp": now + 3600}).encode())
    forged = []
    for key in (public.encode(), public.strip().encode(), der):
        head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        mac = hmac.new(key, f"{head}.{claims}".encode(), hashlib.sha256).digest()
        forged.append(f"{head}.{claims}.{b64url(mac)}")
    forged.append(f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{claims}.")
    _, url = assign()
    for fake in forged:
        status = upgrade_status(url, fake)
        check(" 401 " in status + " " or "401" in status,
              f"a forged token ({jwt_header(fake)['alg']}) got {status} at {url}, not 401")
    check(upgrade_status(url, alice) == "101", "alice's real token was refused")
    log(f"{len(forged)} forged tokens (HS256 keyed by the public key, alg none) refused at /ws "
        f"(401); the registry's EdDSA token opens it")

    # The socket server's credential opens what it needs (registration: it registered) and not
    # the message service's membership route; the manager's does.
    members = f"http://message-service:8401/internal/v1/conversations/{conv}/members"
    manager = run(COMPOSE + ["ps", "-q", "socket-manager"]).split()[0]
    for container, role, secret, want in [
        (socket, "socket-server", secrets["socket-server"], "403"),
        (socket, "socket-manager", secrets["socket-server"], "401"),
        (socket, "socket-server", "guess", "401"),
        (manager, "socket-manager", secrets["socket-manager"], "200"),
    ]:
        got = curl_as(container, role, secret, members)
        check(got == want, f"the membership route as {role} (secret of "
              f"{'the socket server' if secret == secrets['socket-server'] else role}) from "
              f"{container[:12]}: {got}, expected {want}")
    log("the socket server's credential: 403 on the membership route, 401 claiming the "
        "manager's role; the manager's credential: 200")


def nginx_conn_limit():
    """The connection limit per address of nginx/compose.conf (`limit_conn sb_conn_per_ip N`)."""
    conf = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nginx", "compose.conf")
    with open(conf) as f:
        for line in f:
            words = line.split()
            if words[:2] == ["limit_conn", "sb_conn_per_ip"]:
                return int(words[2].rstrip(";"))
    raise Fail("nginx/compose.conf has no `limit_conn sb_conn_per_ip`")


NGINX_CONN_LIMIT = nginx_conn_limit()


def nginx_connection_limit():
    """8. One address holding NGINX_CONN_LIMIT + 40 requests open: the excess gets 429 from
    nginx's limit_conn, a client at another address (the registry container) still gets
    through, and the flooding address again once its connections are closed."""
    # A request counts against limit_conn while nginx processes it: each of these sends a
    # head announcing a body it never sends, so nginx holds it reading the body. Paced under
    # limit_req's 50 requests/s, so every refusal is limit_conn's.
    head = (f"POST /api/v1/dev/token HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    flood = NGINX_CONN_LIMIT + 40
    held, refused, other = [], 0, []
    try:
        for _ in range(flood):
            s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
            s.sendall(head)
            held.append(s)
            time.sleep(1 / 40)
        # The held ones answer nothing (nginx waits for their bodies); the refused ones 429.
        time.sleep(1)
        answered, _, _ = select.select(held, [], [], 1)
        for s in answered:
            s.settimeout(5)
            data = s.recv(4096)
            if data.startswith(b"HTTP/1.1 429"):
                refused += 1
            else:
                other.append(data[:60])
            s.close()
        held = [s for s in held if s not in answered]
        check(not other, f"unexpected answers to the connection flood: {other[:3]}")
        check(len(held) <= NGINX_CONN_LIMIT and refused >= flood - NGINX_CONN_LIMIT,
              f"{flood} connections from one address: {len(held)} held, {refused} refused "
              f"(limit_conn {NGINX_CONN_LIMIT})")
        # Meanwhile a client at another address gets through (the registry's container).
        registry = run(COMPOSE + ["ps", "-q", "registry"]).split()[0]
        out = run_any(DOCKER + ["exec", registry, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                "http://nginx/api/v1/socket-servers"], timeout=15)
        check(out == "200", f"another address got {out} from nginx during the flood")
        status, _ = http("GET", "/api/v1/socket-servers")
        check(status == 429, f"the flooding address got {status} for one more request, not 429")
    finally:
        for s in held:
            s.close()
    until(10, "the flooding address to get through again once it let go",
          lambda: http("GET", "/api/v1/socket-servers")[0] == 200)
    # Descriptors for that many: nginx's workers (worker_rlimit_nofile) and the socket servers
    # (the service's `ulimits`) may open 20,000 files each.
    # ([n]ginx: a pattern that does not match the shell running it.)
    for service, process in [("nginx", "[n]ginx: worker"), ("socket-server", "[s]ocket-server")]:
        container = run(COMPOSE + ["ps", "-q", service]).split()[0]
        out = run_any(DOCKER + ["exec", container, "sh", "-c",
                                "for p in /proc/[0-9]*; do "
                                f"grep -aq '{process}' $p/cmdline 2>/dev/null "
                                "&& grep 'Max open files' $p/limits && break; done"], timeout=15)
        check(out.split()[3:4] == ["20000"], f"{service}: open files limit {out!r}, not 20000")
    log("nginx's workers and the socket servers may open 20,000 files each")
    log(f"nginx limit_conn: {flood} connections from one address, {len(held)} held, {refused} "
        f"refused with 429; another address and then the same one got through")


def managers_and_registries(a_ws, b_ws, conv, acked):
    """10. Scaling: two socket managers behind one name; one stopped, sends go on through the
    other. A registry added at run time gets requests from nginx through Docker's DNS."""
    managers = run(COMPOSE + ["ps", "-q", "socket-manager"]).split()
    registries = run(COMPOSE + ["ps", "-q", "registry"]).split()
    check(len(managers) == 2 and len(registries) == 2,
          f"{len(managers)} socket managers and {len(registries)} registries, expected 2 and 2")
    ids = set()
    for m in managers:
        env = run(DOCKER + ["exec", m, "sh", "-c", "tr '\\0' '\\n' < /proc/1/environ"])
        ids |= {line for line in env.splitlines() if line.startswith("SB_MANAGER_ID=")}
    check(len(ids) == 2, f"the socket managers' SB_MANAGER_ID are not distinct: {ids}")
    victim = managers[0]
    log(f"docker stop {victim[:12]} (one of the two socket managers)")
    t_stop = time.monotonic()
    run(DOCKER + ["stop", "-t", "10", victim], timeout=40)
    for i in range(3):
        cmid = f"m-{i}"
        acked[cmid] = send_acked(a_ws, conv, cmid, f"with one manager {i}", 20)
        b_ws.wait_for(10, lambda f, c=cmid: f.get("type") == "message" and f.get("seq") == acked[c],
                      f"message {cmid} through the remaining manager")
    log(f"sends acknowledged and delivered through the other manager "
        f"({time.monotonic() - t_stop:.1f}s after the stop began)")
    run(DOCKER + ["start", victim], timeout=30)
    until(60, "the stopped manager to be ready again", lambda: run_any(
        DOCKER + ["exec", victim, "curl", "-fsS", "-o", "/dev/null", "-w", "%{http_code}",
                  "http://localhost:8201/ready"], timeout=10) == "200", interval=1)

    # A third registry: nginx re-resolves `registry` (resolver valid=10s) and sends it requests.
    scale = os.environ.get("SMOKE_SCALE", "").replace("registry=2", "registry=3").split()
    run(COMPOSE + ["up", "-d", "--no-build", "--no-deps", "--no-recreate"] + scale + ["registry"],
        timeout=180)
    added = [r for r in run(COMPOSE + ["ps", "-q", "registry"]).split() if r not in registries]
    check(len(added) == 1, f"scaling to 3 registries added {added}")

    def assigned_by_new():
        assign()
        metrics = run_any(DOCKER + ["exec", added[0], "curl", "-s", "http://localhost:8101/metrics"],
                          timeout=10)
        served = sum(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("switchboard_registry_assignments_total"))
        return served > 0 and served

    t_up = time.monotonic()
    served = until(60, "the new registry to get assignments through nginx", assigned_by_new, interval=0.5)
    log(f"a third registry, added at run time, served {served:.0f} assignments through nginx "
        f"within {time.monotonic() - t_up:.1f}s (Docker DNS, nginx `resolve`)")


def idle_connections(total=5000, users=500, hold_s=20):
    """11. `total` idle WebSockets through nginx to the three socket servers, held for hold_s
    seconds (longer than the servers' 15 s client timeout: the client answers their pings),
    counted by the registry, then released."""
    nginx_ip = os.environ["SMOKE_NGINX_IP"]
    sources = os.environ["SMOKE_SOURCES"].split()
    check(total / len(sources) <= NGINX_CONN_LIMIT,
          f"{len(sources)} source addresses cannot hold {total} under limit_conn {NGINX_CONN_LIMIT}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    check(hard >= total + 200, f"the smoke client may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The socket server stopped in step 3 comes back first (its container, started again).
    run(COMPOSE + ["start", "socket-server"], timeout=120)
    listed = until(90, "3 registered socket servers again", lambda: (s := servers()) and len(s) == 3 and s)
    paths = sorted(urllib.parse.urlsplit(u).path for u in listed.values())
    check(len(paths) == 3, f"expected 3 socket servers, have {paths}")
    # Tokens straight from a registry (dev mode; its own address, not nginx's rate limits).
    registry = container_ip(run(COMPOSE + ["ps", "-q", "registry"]).split()[0])
    toks = []
    for u in range(users):
        req = urllib.request.Request(f"http://{registry}:8101/api/v1/dev/token", method="POST",
                                     data=json.dumps({"user_id": f"idle-{u}"}).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            toks.append(json.loads(resp.read())["token"])
    sel = selectors.DefaultSelector()
    conns = {}  # fd -> state dict
    opened, refused, closed = 0, [], 0
    pending, pending_limit = 0, 300

    def start(i):
        nonlocal pending
        pending += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((sources[i % len(sources)], 0))
        s.setblocking(False)
        s.connect_ex((nginx_ip, 80))
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {paths[i % 3]}?token={toks[i % users]} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        conns[s.fileno()] = {"sock": s, "out": req, "in": b"", "open": False}
        sel.register(s, selectors.EVENT_WRITE)

    def pong(c, payload):
        mask = os.urandom(4)
        c["sock"].send(bytes([0x8A, 0x80 | len(payload)]) + mask
                       + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def drop(fd, c, why):
        nonlocal closed, pending
        sel.unregister(c["sock"])
        c["sock"].close()
        del conns[fd]
        if c["open"]:
            closed += 1
        else:
            pending -= 1
            refused.append(why)

    def pump(timeout):
        nonlocal opened, pending
        for key, events in sel.select(timeout):
            fd, c = key.fd, conns.get(key.fd)
            if c is None:
                continue
            try:
                if events & selectors.EVENT_WRITE:
                    c["sock"].send(c["out"])
                    sel.modify(c["sock"], selectors.EVENT_READ)
                    continue
                data = c["sock"].recv(65536)
            except OSError as e:
                drop(fd, c, repr(e))
                continue
            if not data:
                drop(fd, c, "closed")
                continue
            c["in"] += data
            if not c["open"]:
                if b"\r\n\r\n" not in c["in"]:
                    continue
                head, c["in"] = c["in"].split(b"\r\n\r\n", 1)
                if b" 101 " not in head.split(b"\r\n", 1)[0] + b" ":
                    drop(fd, c, head.split(b"\r\n", 1)[0].decode(errors="replace"))
                    continue
                c["open"] = True
                opened += 1
                pending -= 1
            buf = c["in"]
            while len(buf) >= 2:
                op, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, at = struct.unpack(">H", buf[2:4])[0], 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, at = struct.unpack(">Q", buf[2:10])[0], 10
                if len(buf) < at + n:
                    break
                payload, buf = buf[at:at + n], buf[at + n:]
                if op == 0x9:
                    pong(c, payload)
                elif op == 0x8:
                    c["in"] = b""
                    drop(fd, c, "close frame")
                    break
            else:
                c["in"] = buf
                continue
            if fd in conns:
                c["in"] = buf

    t0 = time.monotonic()
    i = 0
    while i < total or pending > 0:
        while i < total and pending < pending_limit:
            start(i)
            i += 1
        pump(0.05)
        check(time.monotonic() - t0 < 120, f"opening {total} connections took over 120 s "
              f"({opened} open, {len(refused)} refused: {refused[:3]})")
        check(len(refused) <= total // 100,
              f"{len(refused)} of the idle connections refused: {refused[:5]}")
    took = time.monotonic() - t0
    check(opened - closed >= total - len(refused) and not refused,
          f"{opened} opened, {closed} closed, {len(refused)} refused: {refused[:5]}")
    log(f"{total} idle WebSockets open through nginx to 3 socket servers in {took:.1f}s "
        f"({len(sources)} source addresses, {users} users)")
    end = time.monotonic() + hold_s
    while time.monotonic() < end:
        pump(0.5)
    check(len(conns) == total and closed == 0,
          f"after {hold_s}s only {len(conns)} of {total} are open ({closed} closed by the far end)")
    def registry_count():
        pump(0.1)
        status, body = http("GET", "/api/v1/socket-servers")
        return sum(s.get("connections", 0) for s in body["servers"]) if status == 200 else -1

    counted = until(15, f"the registry to count {total} connections", lambda: (n := registry_count()) >= total and n)
    check(len(conns) == total, f"{total - len(conns)} idle connections closed while counting")
    log(f"all {total} held for {hold_s}s (pings answered), the registry counts {counted}")
    for c in list(conns.values()):
        c["sock"].close()
    sel.close()
    until(30, "the registry to count the idle connections gone", lambda: sum(
        s.get("connections", 0) for s in http("GET", "/api/v1/socket-servers")[1]["servers"]) < total // 10)


# ---- attachments (step 13) -------------------------------------------------------------------


def store_request(method, url, headers, data=None):
    """(status, headers) of a request straight to the object store (a pre-signed URL)."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return resp.status, resp.headers
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers


def attachments_cors(tok, conv):
    """The demo page uploads to the store's pre-signed URLs cross-origin: the bucket's CORS
    rule (set by compose's garage-setup) allows the page's origin and no other."""
    status, ticket = http("POST", f"/api/v1/conversations/{conv}/attachments",
                          {"filename": "smoke.txt", "content_type": "text/plain", "size": 5}, token=tok)
    check(status == 201, f"attachment ticket: {status} {ticket}")
    url = ticket["upload_url"]
    page = f"http://localhost:{PORT}"
    preflight = {"access-control-request-method": "PUT",
                 "access-control-request-headers": "content-type"}
    status, headers = store_request("OPTIONS", url, {"origin": page, **preflight})
    check(status == 200 and headers.get("access-control-allow-origin") == page
          and "PUT" in headers.get("access-control-allow-methods", ""),
          f"the store's preflight for the page's origin {page} answered {status} {dict(headers)}")
    # Refused: not 2xx (what a browser requires of a preflight), and never this origin echoed
    # (Garage puts a blanket `*` on every S3 error, so pages can read error bodies).
    foreign = "https://evil.example"
    status, headers = store_request("OPTIONS", url, {"origin": foreign, **preflight})
    check(status >= 400 and headers.get("access-control-allow-origin") != foreign
          and not headers.get("access-control-allow-methods"),
          f"the store's preflight for {foreign} answered {status} {dict(headers)}")
    status, headers = store_request("PUT", url, {"origin": page, "content-type": "text/plain"},
                                    data=b"hello")
    check(status == 200 and headers.get("access-control-allow-origin") == page,
          f"the upload through the pre-signed URL answered {status} {dict(headers)}")
    log(f"the object store allows the page's origin {page} (preflight and upload), "
        f"refuses {foreign}")


# ---- the scenario ----------------------------------------------------------------------------


def webhook_signature_ok(secret, hook):
    """Standard Webhooks: HMAC-SHA256 of `id.timestamp.body` under the base64 key after
    `whsec_`; `webhook-signature` holds one or more `v1,<base64>` (space separated)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{hook['id']}.{hook['timestamp']}.{hook['raw']}".encode()
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(sig.removeprefix("v1,"), want)
               for sig in hook["signature"].split() if sig.startswith("v1,"))


def sink_get(path):
    sink = run(COMPOSE + ["ps", "-q", "push-gateway-sink"])
    out = run_any(DOCKER + ["exec", sink, "curl", "-fsS", f"http://localhost:8502{path}"], timeout=15)
    return json.loads(out)


def app_backend(alice_token):
    """12. The server API, a webhook and a push, end to end through nginx."""
    key = os.environ["SMOKE_API_KEY"]
    status, body = http("GET", "/server/v1/webhooks", token=alice_token)
    check(status == 401, f"a user token on /server answered {status} {body}")
    status, body = http("GET", "/api/v1/conversations", token=key)
    check(status == 401, f"an API key on /api answered {status} {body}")
    status, endpoint = http("POST", "/server/v1/webhooks", token=key, body={
        "url": "http://push-gateway-sink:8502/webhook", "event_types": ["message.created"]})
    check(status == 201 and endpoint.get("secret", "").startswith("whsec_"),
          f"registering the sink as a webhook endpoint: {status} {endpoint}")
    # An endpoint elsewhere in the compose network is refused (SSRF guard): only the
    # sink's own network is allow-listed.
    status, body = http("POST", "/server/v1/webhooks", token=key, body={
        "url": "http://postgres:5432/", "event_types": ["message.created"]})
    check(status == 400, f"an endpoint at postgres was not refused: {status} {body}")
    # A member who never connects, with a push device.
    dave = token("dave")
    status, device = http("POST", "/api/v1/push/devices", token=dave, body={
        "app_id": "com.example.smoke", "platform": "fcm", "pushkey": "smoke-dave-phone", "data": {}})
    check(status in (200, 201) and "device_id" in device, f"registering dave's device: {status} {device}")
    status, group = http("POST", "/server/v1/conversations", token=key, body={
        "kind": "group", "name": "smoke", "members": ["alice", "dave"]})
    check(status in (200, 201), f"a group through the server API: {status} {group}")
    path = f"/server/v1/conversations/{group['id']}/messages"
    post = {"sender_id": "alice", "body": "from the backend"}
    status, posted = http("POST", path, post, token=key, headers={"Idempotency-Key": "smoke-1"})
    check(status == 201 and posted.get("seq") == 1, f"a message through the server API: {status} {posted}")
    status, again = http("POST", path, post, token=key, headers={"Idempotency-Key": "smoke-1"})
    check(status in (200, 201) and again.get("seq") == posted["seq"]
          and again.get("message_id") == posted["message_id"],
          f"the same Idempotency-Key replayed: {status} {again}, first {posted}")

    def delivered():
        hooks = sink_get("/webhooks")["webhooks"]
        return [h for h in hooks if h["id"] == f"evt_{posted['message_id']}"]

    hooks = until(60, "the message.created webhook at the sink", delivered, interval=0.5)
    hook = hooks[0]
    check(hook["body"]["type"] == "message.created"
          and hook["body"]["data"]["seq"] == posted["seq"]
          and hook["body"]["data"]["conversation_id"] == group["id"],
          f"the webhook's body: {hook['body']}")
    check(webhook_signature_ok(endpoint["secret"], hook),
          f"the webhook's signature does not verify: {hook['signature']}")

    def pushed():
        return [p for p in sink_get("/pushes")["pushes"]
                if p["body"].get("user_id") == "dave" and p["body"].get("conversation_id") == group["id"]]

    pushes = until(60, "dave's push at the sink", pushed, interval=0.5)
    check(pushes[0]["verified"] and pushes[0]["body"].get("message_id") == posted["message_id"],
          f"dave's push: {pushes[0]}")
    log("app backends: API keys scoped to /server, a signed message.created delivered to the "
        "sink, a signed push for an offline member, the SSRF guard refuses postgres")


def main():
    # 1. all three replicas registered and handed out
    listed = until(90, "3 registered socket servers", lambda: (s := servers()) and len(s) == 3 and s)
    log(f"registered: {sorted(listed)}")
    seen = set()
    for _ in range(30):
        seen.add(assign()[0])
        if len(seen) == 3:
            break
    check(seen == set(listed), f"the registry handed out {sorted(seen)}, registered {sorted(listed)}")
    log("the registry hands out all 3 replicas")

    # 5a. what the public entry point must not expose. nginx itself refuses (403 forbidden),
    # not the registry (which would answer 401 for a missing cluster secret).
    intruder = {"server_id": "intruder", "url": "ws://evil.example/ws",
                "health_url": "http://127.0.0.1:9/live", "max_connections": 10}
    status, body = http("POST", "/api/v1/socket-servers", intruder,
                        headers={"x-cluster-secret": "guess"})
    check(status == 403 and isinstance(body, dict) and body["error"]["code"] == "forbidden",
          f"register through the public nginx answered {status} {body}, not nginx's 403")
    sid0 = next(iter(listed))
    status, body = http("DELETE", f"/api/v1/socket-servers/{sid0}",
                        headers={"x-cluster-secret": "guess"})
    check(status == 403 and isinstance(body, dict) and body["error"]["code"] == "forbidden",
          f"deregister through the public nginx answered {status} {body}, not nginx's 403")
    check(len(servers()) == 3, "a server was deregistered through the public nginx")
    # The internal listener (where the 3 replicas registered) passes register to the
    # registry, which still wants the cluster secret; it serves nothing else.
    nginx = run(COMPOSE + ["ps", "-q", "nginx"])
    internal = "http://127.0.0.1:8081"
    out = run_any(DOCKER + ["exec", nginx, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "-X", "POST", "-H", "content-type: application/json",
                            "-d", json.dumps(intruder), f"{internal}/api/v1/socket-servers"])
    check(out == "401", f"register on nginx's internal listener without the secret answered {out}")
    out = run_any(DOCKER + ["exec", nginx, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            f"{internal}/api/v1/socket-server"])
    check(out == "404", f"assign on nginx's internal listener answered {out}")
    for ip in ("10.0.0.1", "172.16.0.1", "192.168.0.1"):
        status, _ = http("GET", f"/ws/{ip}")
        check(status in (403, 404), f"/ws/{ip} (not a registered server) answered {status}")
    log("register/deregister refused by the public nginx (403); the internal listener "
        "passes register to the registry (401 without the secret); the tunnel reaches "
        "registered servers only")

    # 6. Redis AUTH: refused without the password, on loopback and over the network
    master = run(COMPOSE + ["ps", "-q", "redis-master"])
    sentinel = run(COMPOSE + ["ps", "-q", "sentinel-1"])
    for where, cmd in [
        ("the master, on loopback", [master, "redis-cli", "-p", "6379", "ping"]),
        ("the master, from sentinel-1", [sentinel, "redis-cli", "-h", "redis-master", "-p", "6379", "ping"]),
        ("the master, a write", [sentinel, "redis-cli", "-h", "redis-master", "-p", "6379",
                                 "set", "sb:smoke:intruder", "1"]),
        ("sentinel-1", [sentinel, "redis-cli", "-p", "26379", "sentinel", "masters"]),
    ]:
        out = run_any(DOCKER + ["exec"] + cmd, timeout=15)
        check("NOAUTH" in out, f"unauthenticated redis-cli to {where} was not refused: {out!r}")
    out = run_any(DOCKER + ["exec", sentinel] + AUTH_CLI + ["-h", "redis-master", "-p", "6379", "ping"],
                  timeout=15)
    check(out == "PONG", f"redis-cli with the password to the master answered {out!r}")
    # Every Redis secret was generated into the volumes, and a service's Redis volume holds
    # its own two passwords only.
    registry = run(COMPOSE + ["ps", "-q", "registry"]).split()[0]
    where, names = "/var/lib/switchboard/redis", ("SB_REDIS_PASSWORD", "SB_REDIS_SENTINEL_PASSWORD")
    sizes, modes, out = dir_listing(registry, where)
    check(set(sizes) == set(names)
          and all(sizes.get(n) == "48" and modes.get(n) == ("10001", "600") for n in names)
          and modes.get(".") == ("10001", "700"),
          f"{where} in a registry should hold exactly {names} (48 hex digits, uid 10001, "
          f"modes 700/600): {out!r}")
    log("Redis and Sentinel refuse unauthenticated clients (NOAUTH), accept the password")

    least_privilege(master, sentinel)

    # 2. two clients on different replicas chat through nginx
    alice, bob = token("alice"), token("bob")
    status, conv = http("POST", "/api/v1/conversations", {"kind": "direct", "members": ["bob"]}, token=alice)
    check(status in (200, 201), f"create conversation: {status} {conv}")
    conv = conv["id"]
    a_sid, a_ws = connect(alice, "alice")
    b_sid, b_ws = connect(bob, "bob", avoid={a_sid})
    log(f"alice on {a_sid}, bob on {b_sid}")
    acked = {}
    for i in range(5):
        cmid = f"a-{i}"
        acked[cmid] = send_acked(a_ws, conv, cmid, f"hello bob {i}", 15)
        b_ws.wait_for(10, lambda f, c=cmid: f.get("type") == "message" and f.get("seq") == acked[c],
                      f"message seq {acked[cmid]}")
    acked["b-0"] = send_acked(b_ws, conv, "b-0", "hi alice", 15)
    a_ws.wait_for(10, lambda f: f.get("type") == "message" and f.get("seq") == acked["b-0"], "bob's reply")
    # The message service copies the log into PostgreSQL asynchronously: wait (bounded).
    msgs = until(15, "every acknowledged message in history", lambda: (h := history(alice, conv))
                 and {m["client_msg_id"] for m in h} >= set(acked) and h)
    check([m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)), f"history seqs have gaps: {msgs}")
    log(f"chat across replicas works, history intact ({len(msgs)} messages)")

    credentials(conv)
    app_backend(alice)
    attachments_cors(alice, conv)

    # 3. stop bob's replica while alice keeps sending
    before = start_state()
    victim = b_sid[len("socket-"):]
    log(f"docker stop {victim} (bob's server)")
    stopper = subprocess.Popen(DOCKER + ["stop", "-t", "20", victim],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t_stop = time.monotonic()
    i = 5
    evicted_after = None
    while time.monotonic() - t_stop < 25:
        cmid = f"a-{i}"
        acked[cmid] = send_acked(a_ws, conv, cmid, f"during the stop {i}", 15)
        i += 1
        if evicted_after is None and b_sid not in servers():
            evicted_after = time.monotonic() - t_stop
        if evicted_after is not None and stopper.poll() is not None:
            break
        time.sleep(0.2)
    check(stopper.wait(timeout=30) == 0, f"docker stop failed: {stopper.stderr.read()}")
    if evicted_after is None:
        until(10, f"{b_sid} to leave the registry", lambda: b_sid not in servers())
        evicted_after = time.monotonic() - t_stop
    check(evicted_after < 10, f"{b_sid} left the registry only after {evicted_after:.1f}s")
    log(f"{b_sid} left the registry {evicted_after:.1f}s after docker stop")
    b_ws.close()
    b2_sid, b_ws = connect(bob, "bob", avoid={b_sid})
    log(f"bob reconnected to {b2_sid}")
    acked["a-last"] = send_acked(a_ws, conv, "a-last", "after the stop", 15)
    b_ws.wait_for(10, lambda f: f.get("type") == "message" and f.get("seq") == acked["a-last"],
                  "a live message after reconnecting")
    msgs = until(15, "every acknowledged message in history",
                 lambda: (h := history(bob, conv)) and {m["client_msg_id"] for m in h} >= set(acked) and h)
    by_cmid = {m["client_msg_id"]: m["seq"] for m in msgs}
    check(all(by_cmid[c] == s for c, s in acked.items()), "a message's seq changed")
    check([m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)), "history seqs have gaps")
    log(f"nothing acknowledged lost ({len(acked)} acknowledged, {len(msgs)} in history)")
    after = start_state()
    restarted = [c[:12] for c, s in before.items() if c in after and after[c] != s]
    check(not restarted, f"containers restarted during the replica stop: {restarted}")

    # 4. stop the Redis master container
    before = start_state()
    master = run(COMPOSE + ["ps", "-q", "redis-master"])
    sentinel = run(COMPOSE + ["ps", "-q", "sentinel-1"])
    old_master = container_ip(master)
    check(sentinel_master(sentinel) == old_master,
          f"Sentinel's master is {sentinel_master(sentinel)}, the redis-master container is {old_master}")
    log("docker stop redis-master")
    run(DOCKER + ["stop", "-t", "5", master], timeout=30)
    t_stop = time.monotonic()
    seq = send_acked(a_ws, conv, "a-failover", "after the Redis failover", 15 - (time.monotonic() - t_stop))
    took = time.monotonic() - t_stop
    acked["a-failover"] = seq
    b_ws.wait_for(10, lambda f: f.get("type") == "message" and f.get("seq") == seq, "the message after failover")
    new_master = until(10, "Sentinel to name a new master",
                       lambda: (m := sentinel_master(sentinel)) not in ("", old_master) and m)
    log(f"acknowledged {took:.1f}s after stopping the master; Sentinel's master is now {new_master}")
    until(15, "an assignment after the failover", lambda: assign())
    b3_sid, b3 = connect(token("carol"), "carol")
    b3.close()
    until(15, "every acknowledged message in history after the failover",
          lambda: {m["client_msg_id"] for m in history(bob, conv)} >= set(acked))
    after = start_state()
    restarted = [c[:12] for c, s in before.items() if c in after and after[c] != s and c != master]
    check(not restarted, f"containers restarted during the Redis failover: {restarted}")
    log("Redis failover: work resumed, no service restarted")

    # 4b. the old master comes back as a replica of the new one: its restart path asks the
    # Sentinels (authenticated) for the master and replicates with masterauth.
    run(DOCKER + ["start", master], timeout=30)

    def rejoined():
        info = run_any(DOCKER + ["exec", master] + AUTH_CLI + ["-p", "6379", "info", "replication"],
                       timeout=10)
        return ("role:slave" in info and f"master_host:{new_master}" in info
                and "master_link_status:up" in info)

    until(30, "the old master to rejoin as a replica of the new one", rejoined, interval=1)
    log("the old master came back as an authenticated replica of the new master")
    managers_and_registries(a_ws, b_ws, conv, acked)
    until(15, "every acknowledged message in history after the manager stop",
          lambda: {m["client_msg_id"] for m in history(bob, conv)} >= set(acked))
    a_ws.close()
    b_ws.close()

    idle_connections()
    nginx_connection_limit()
    log("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except (Fail, subprocess.TimeoutExpired) as e:
        log(f"FAILED: {e}")
        sys.exit(1)
