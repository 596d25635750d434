"""An independent Switchboard client, written from docs/protocol.md alone.

Python stdlib plus `websockets` (pinned: websockets==13.1, its asyncio API). Nothing here is
derived from the Rust sources: every path, field, status and code comes from the protocol
document, so a mismatch between this client and the server is a mismatch between the document
and the server.

Layers:
- tokens: `mint_hs256` (a JWT signed with the shared secret, stdlib hmac) and `dev_token`
  (`POST /api/v1/dev/token`);
- `Rest`: the REST API through the public entry point (registry, conversations, history,
  members, roles, presence), raising `ApiError(status, code, message)` on the error envelope;
- `Connection`: one WebSocket to one socket server: `hello`, frames in and out, an inbox of
  received frames to wait on;
- `Client`: a well-behaved client (protocol.md section 5): reconnects through the registry,
  resends with the same `client_msg_id`, dedupes by `message_id`, fetches history on a gap and
  after every reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Optional

import websockets
from websockets.asyncio.client import connect as ws_connect

__all__ = [
    "ApiError",
    "FrameError",
    "Client",
    "Connection",
    "Rest",
    "dev_token",
    "mint_hs256",
    "decode_jwt_unverified",
    "new_client_msg_id",
    "ULID_RE",
    "RFC3339_MS_UTC_RE",
]

# `message_id` is a ULID: 26 characters of Crockford base32 (no I, L, O, U).
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
# `created_at` is RFC 3339 UTC with milliseconds.
RFC3339_MS_UTC_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|\+00:00)$")
# Any RFC 3339 timestamp (e.g. `expires_at`, `last_seen`).
RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_hs256(
    secret: str | bytes,
    sub: str,
    ttl_s: int = 3600,
    *,
    iat: Optional[int] = None,
    nbf: Optional[int] = None,
    exp: Optional[int] = None,
    iss: Optional[str] = None,
    aud: Optional[str] = None,
    extra: Optional[dict] = None,
) -> str:
    """A JWT, HS256 with the deployment's shared secret (protocol.md section 1).

    Claims: `sub` (the user id), `exp` (required), `iat`, optional `nbf`, `iss`, `aud`.
    """
    now = int(time.time())
    iat = now if iat is None else iat
    claims: dict[str, Any] = {"sub": sub, "iat": iat, "exp": iat + ttl_s if exp is None else exp}
    if nbf is not None:
        claims["nbf"] = nbf
    if iss is not None:
        claims["iss"] = iss
    if aud is not None:
        claims["aud"] = aud
    if extra:
        claims.update(extra)
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    key = secret.encode() if isinstance(secret, str) else secret
    sig = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url(sig)


def decode_jwt_unverified(token: str) -> tuple[dict, dict]:
    """(header, claims) of a JWT, without checking the signature (for inspection only)."""
    head, body, _sig = token.split(".")
    return json.loads(_b64url_decode(head)), json.loads(_b64url_decode(body))


def new_client_msg_id() -> str:
    return "py-" + uuid.uuid4().hex


# --------------------------------------------------------------------------------------------
# REST
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A REST error: the HTTP status and the envelope's `code` and `message`."""

    def __init__(self, status: int, code: Optional[str], message: str, raw: Any = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.raw = raw


class Response:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def _quote_segment(segment: str) -> str:
    # Percent-encode user ids (`auth0|5f7c8e`, `ann@example.com`) in URL paths.
    return urllib.parse.quote(segment, safe="")


class Rest:
    """The REST API through the public entry point (nginx, `http://HOST:8080` locally)."""

    def __init__(self, base_url: str, token: Optional[str] = None, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def with_token(self, token: Optional[str]) -> "Rest":
        return Rest(self.base_url, token, self.timeout)

    # Raw request: never raises on an HTTP status, so callers can check error shapes.
    def raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Optional[list[tuple[str, str]]] = None,
        headers: Optional[dict] = None,
        raw_body: Optional[bytes] = None,
        auth: bool = True,
    ) -> Response:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = raw_body
        hdrs = {"accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs["content-type"] = "application/json"
        if auth and self.token:
            hdrs["authorization"] = f"Bearer {self.token}"
        if headers:
            hdrs.update(headers)
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return Response(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, dict(e.headers or {}), e.read() or b"")

    def call(self, method: str, path: str, body: Any = None, **kw) -> Any:
        """A request that must succeed (2xx); otherwise `ApiError` from the error envelope."""
        resp = self.raw(method, path, body, **kw)
        if 200 <= resp.status < 300:
            return resp.json()
        raise api_error(resp)

    # ---- 1. tokens --------------------------------------------------------------------------

    def dev_token(self, user_id: str) -> dict:
        """`POST /api/v1/dev/token` (dev mode only): `{"token","user_id","expires_at"}`."""
        return self.call("POST", "/api/v1/dev/token", {"user_id": user_id}, auth=False)

    # ---- 2. registry ------------------------------------------------------------------------

    def socket_server(self) -> dict:
        """`GET /api/v1/socket-server`: `{"server_id","url","connections","max_connections"}`."""
        return self.call("GET", "/api/v1/socket-server")

    def socket_servers(self) -> list[dict]:
        return self.call("GET", "/api/v1/socket-servers")["servers"]

    # ---- 4. conversations and history -------------------------------------------------------

    def create_direct(self, other: str) -> dict:
        return self.call("POST", "/api/v1/conversations", {"kind": "direct", "members": [other]})

    def create_group(self, name: str, members: list[str]) -> dict:
        return self.call(
            "POST", "/api/v1/conversations", {"kind": "group", "name": name, "members": members}
        )

    def conversations(self) -> list[dict]:
        return self.call("GET", "/api/v1/conversations")["conversations"]

    def history(self, conversation_id: str, after_seq: Optional[int] = None,
                limit: Optional[int] = None) -> list[dict]:
        query = []
        if after_seq is not None:
            query.append(("after_seq", str(after_seq)))
        if limit is not None:
            query.append(("limit", str(limit)))
        path = f"/api/v1/conversations/{_quote_segment(conversation_id)}/messages"
        return self.call("GET", path, query=query)["messages"]

    def history_all(self, conversation_id: str, after_seq: int = 0, page: int = 1000) -> list[dict]:
        """Every message after `after_seq`, paging by `seq`."""
        out: list[dict] = []
        while True:
            batch = self.history(conversation_id, after_seq, page)
            out.extend(batch)
            if len(batch) < page:
                return out
            after_seq = batch[-1]["seq"]

    def add_member(self, conversation_id: str, user_id: str) -> dict:
        path = f"/api/v1/conversations/{_quote_segment(conversation_id)}/members"
        return self.call("POST", path, {"user_id": user_id})

    def remove_member(self, conversation_id: str, user_id: str) -> None:
        path = (f"/api/v1/conversations/{_quote_segment(conversation_id)}/members/"
                f"{_quote_segment(user_id)}")
        resp = self.raw("DELETE", path)
        if resp.status != 204:
            raise api_error(resp)

    def set_role(self, conversation_id: str, user_id: str, role: str) -> dict:
        path = (f"/api/v1/conversations/{_quote_segment(conversation_id)}/members/"
                f"{_quote_segment(user_id)}/role")
        return self.call("PUT", path, {"role": role})

    def presence(self, user_ids: list[str]) -> list[dict]:
        return self.call("GET", "/api/v1/presence", query=[("user_id", u) for u in user_ids])[
            "presence"
        ]


def api_error(resp: Response) -> ApiError:
    """The error envelope `{"error":{"code","message"}}` of a non-2xx answer."""
    try:
        doc = resp.json()
        err = doc["error"]
        return ApiError(resp.status, err.get("code"), err.get("message", ""), doc)
    except Exception:  # not the documented envelope: keep what came back
        return ApiError(resp.status, None, resp.body[:300].decode("utf-8", "replace"), None)


def dev_token(base_url: str, user_id: str) -> str:
    return Rest(base_url).dev_token(user_id)["token"]


# --------------------------------------------------------------------------------------------
# WebSocket
# --------------------------------------------------------------------------------------------


class FrameError(Exception):
    """An `error` frame: `code`, `message`, optional `client_msg_id`."""

    def __init__(self, frame: dict):
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame
        self.code = frame.get("code")
        self.client_msg_id = frame.get("client_msg_id")


class ConnectRefused(Exception):
    """The server refused the upgrade with an HTTP status (401, 403, 503)."""

    def __init__(self, status: int, body: bytes):
        super().__init__(f"upgrade refused: HTTP {status}")
        self.status = status
        self.body = body

    def error_code(self) -> Optional[str]:
        try:
            return json.loads(self.body)["error"]["code"]
        except Exception:
            return None


class Connection:
    """One WebSocket to one socket server.

    Every received frame goes into an inbox; `wait_for(pred)` takes the first matching one
    (and waits for it if needed). `all_frames` keeps everything, in arrival order, for checks.
    """

    def __init__(self, ws, hello: dict, url: str):
        self.ws = ws
        self.hello = hello
        self.url = url
        self.inbox: list[dict] = []
        self.all_frames: list[dict] = [hello]
        self._changed = asyncio.Event()
        self.closed: Optional[BaseException] = None
        self.close_code: Optional[int] = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str, *, use_header: bool = False,
                   headers: Optional[dict] = None, hello_timeout: float = 10.0) -> "Connection":
        """Connect with `?token=` (or an `Authorization: Bearer` header) and read `hello`."""
        extra = dict(headers or {})
        target = url
        if use_header:
            extra["Authorization"] = f"Bearer {token}"
        else:
            sep = "&" if "?" in url else "?"
            target = f"{url}{sep}token={urllib.parse.quote(token, safe='')}"
        try:
            ws = await ws_connect(target, additional_headers=extra or None, max_size=2**21,
                                  open_timeout=hello_timeout)
        except websockets.exceptions.InvalidStatus as e:
            raise ConnectRefused(e.response.status_code, e.response.body or b"") from None
        raw = await asyncio.wait_for(ws.recv(), hello_timeout)
        hello = json.loads(raw)
        if hello.get("type") != "hello":
            await ws.close()
            raise AssertionError(f"the first frame is not hello: {hello}")
        return cls(ws, hello, url)

    async def _read(self):
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    frame = {"type": "__binary__", "data": raw}
                else:
                    try:
                        frame = json.loads(raw)
                    except ValueError:
                        frame = {"type": "__unparsable__", "data": raw}
                self.inbox.append(frame)
                self.all_frames.append(frame)
                self._changed.set()
        except websockets.exceptions.ConnectionClosed as e:
            self.closed = e
        except Exception as e:  # noqa: BLE001 - reported through `closed`
            self.closed = e
        finally:
            if self.closed is None:
                self.closed = ConnectionError("closed")
            # The server's close code (1009 frame too large, 1001 silent, 1012 shutting down,
            # 1013 too slow), from the close frame it sent.
            rcvd = getattr(self.closed, "rcvd", None)
            self.close_code = rcvd.code if rcvd is not None else getattr(self.ws, "close_code", None)
            self._changed.set()

    # ---- frames out -------------------------------------------------------------------------

    async def send_json(self, frame: dict) -> None:
        await self.ws.send(json.dumps(frame))

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def send_binary(self, data: bytes) -> None:
        await self.ws.send(data)

    async def send_message(self, conversation_id: str, body: str,
                           client_msg_id: Optional[str] = None) -> str:
        cmid = client_msg_id or new_client_msg_id()
        await self.send_json({"type": "send", "conversation_id": conversation_id,
                              "client_msg_id": cmid, "body": body})
        return cmid

    async def send_and_wait(self, conversation_id: str, body: str,
                            client_msg_id: Optional[str] = None, timeout: float = 10.0) -> dict:
        """`send`, then the `sent` for its `client_msg_id`; an `error` for it raises."""
        cmid = await self.send_message(conversation_id, body, client_msg_id)
        return await self.wait_sent(cmid, timeout)

    async def wait_sent(self, cmid: str, timeout: float = 10.0) -> dict:
        frame = await self.wait_for(
            lambda f: f.get("client_msg_id") == cmid and f.get("type") in ("sent", "error"),
            timeout,
        )
        if frame["type"] == "error":
            raise FrameError(frame)
        return frame

    async def delivered(self, conversation_id: str, seq: int) -> None:
        await self.send_json({"type": "delivered", "conversation_id": conversation_id, "seq": seq})

    async def read(self, conversation_id: str, seq: int) -> None:
        await self.send_json({"type": "read", "conversation_id": conversation_id, "seq": seq})

    async def typing(self, conversation_id: str) -> None:
        await self.send_json({"type": "typing", "conversation_id": conversation_id})

    async def ping(self, timeout: float = 5.0) -> dict:
        await self.send_json({"type": "ping"})
        return await self.wait_type("pong", timeout)

    # ---- frames in --------------------------------------------------------------------------

    async def wait_for(self, pred: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        """The first unconsumed frame matching `pred` (removed from the inbox)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, frame in enumerate(self.inbox):
                try:
                    ok = pred(frame)
                except Exception:  # noqa: BLE001 - a predicate on an odd frame
                    ok = False
                if ok:
                    del self.inbox[i]
                    return frame
            if self.closed is not None:
                raise ConnectionError(f"connection closed ({self.close_code}) while waiting")
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError("no matching frame within %.1fs" % timeout)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def wait_type(self, type_: str, timeout: float = 10.0, **fields) -> dict:
        def pred(f):
            return f.get("type") == type_ and all(f.get(k) == v for k, v in fields.items())
        return await self.wait_for(pred, timeout)

    def take(self, pred: Callable[[dict], bool]) -> list[dict]:
        """Every unconsumed frame matching `pred`, removed from the inbox, without waiting."""
        out = [f for f in self.inbox if pred(f)]
        self.inbox = [f for f in self.inbox if not pred(f)]
        return out

    async def wait_closed(self, timeout: float = 10.0) -> Optional[int]:
        """The close code once the server closes the connection."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except asyncio.TimeoutError:
            raise asyncio.TimeoutError("the connection was not closed within %.1fs" % timeout)
        return self.close_code

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            try:
                await asyncio.wait_for(self._reader, 5)
            except Exception:  # noqa: BLE001
                pass


# --------------------------------------------------------------------------------------------
# A well-behaved client (protocol.md section 5)
# --------------------------------------------------------------------------------------------


class Client:
    """One user's device: REST + one WebSocket, with the section-5 behaviour.

    - connects through the registry (`GET /api/v1/socket-server`), reconnects with a short
      backoff, and after every reconnect fetches history after the last `seq` it has;
    - keeps each conversation's messages by `seq`, ignores repeats (by `message_id`), and
      treats a gap in `seq` as "fetch history";
    - `send` resends the same `client_msg_id` on `unavailable`/`rate_limited`, on no answer
      and after a reconnect; the answer is the original `seq` and `message_id`.
    """

    def __init__(self, base_url: str, user_id: str, token: str, *, use_header: bool = False):
        self.base_url = base_url
        self.user_id = user_id
        self.token = token
        self.rest = Rest(base_url, token)
        self.use_header = use_header
        self.conn: Optional[Connection] = None
        self.assignment: Optional[dict] = None
        # conversation_id -> {seq: message}; message ids seen
        self.messages: dict[str, dict[int, dict]] = {}
        self.seen_ids: set[str] = set()
        self.duplicates: list[dict] = []  # repeats received live (allowed: at-least-once)
        self.live_order_violations: list[str] = []  # live `message` frames not rising by seq
        self.gaps_fetched: int = 0
        self._last_live: dict[str, int] = {}
        self._pump: Optional[asyncio.Task] = None
        self.live: list[dict] = []  # every `message` frame received, in arrival order
        self._filed = asyncio.Event()

    @classmethod
    def with_dev_token(cls, base_url: str, user_id: str, **kw) -> "Client":
        return cls(base_url, user_id, dev_token(base_url, user_id), **kw)

    @classmethod
    def with_secret(cls, base_url: str, user_id: str, secret: str, **kw) -> "Client":
        return cls(base_url, user_id, mint_hs256(secret, user_id), **kw)

    # ---- connection -------------------------------------------------------------------------

    async def connect(self, attempts: int = 8) -> Connection:
        delay = 0.1
        last: Optional[BaseException] = None
        for _ in range(attempts):
            try:
                self.assignment = await asyncio.to_thread(self.rest.socket_server)
                self.conn = await Connection.open(self.assignment["url"], self.token,
                                                  use_header=self.use_header)
                self._pump = asyncio.create_task(self._pump_messages(self.conn))
                return self.conn
            except (ApiError, ConnectRefused, OSError, asyncio.TimeoutError,
                    websockets.exceptions.WebSocketException) as e:
                last = e
                await asyncio.sleep(delay + random.random() * delay)
                delay = min(delay * 2, 2.0)
        raise ConnectionError(f"{self.user_id}: could not connect: {last}")

    async def reconnect(self) -> Connection:
        """Close (if open), reconnect through the registry, resync every known conversation."""
        await self.disconnect()
        conn = await self.connect()
        await self.resync()
        return conn

    async def disconnect(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except BaseException:  # noqa: BLE001
                pass
        self.conn = None
        self._pump = None

    async def _pump_messages(self, conn: Connection) -> None:
        """Take `message` frames out of the inbox as they arrive and file them."""
        while True:
            try:
                frame = await conn.wait_type("message", timeout=3600)
            except (ConnectionError, asyncio.TimeoutError):
                return
            await self._on_live_message(frame)

    async def wait_message(self, pred: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        """The first live `message` frame (ever received) matching `pred`."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.live:
                if pred(m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError("no matching message within %.1fs" % timeout)
            self._filed.clear()
            try:
                await asyncio.wait_for(self._filed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def _on_live_message(self, m: dict) -> None:
        self.live.append(m)
        self._filed.set()
        conv = m["conversation_id"]
        last_live = self._last_live.get(conv, 0)
        if m["seq"] <= last_live:
            self.live_order_violations.append(
                f"{conv}: live seq {m['seq']} after {last_live}")
        self._last_live[conv] = max(last_live, m["seq"])
        have = self.last_seq(conv)
        self._file(m)
        if m["seq"] > have + 1:
            # A gap: fetch what is missing (history trails live delivery slightly).
            self.gaps_fetched += 1
            await self.fetch_history(conv, after_seq=have, until_seq=m["seq"] - 1)

    def _file(self, m: dict, live: bool = True) -> None:
        conv = m["conversation_id"]
        box = self.messages.setdefault(conv, {})
        if m["message_id"] in self.seen_ids:
            if live:
                self.duplicates.append(m)
            return
        if m["seq"] in box and box[m["seq"]]["message_id"] != m["message_id"]:
            raise AssertionError(
                f"two messages under {conv} seq {m['seq']}: {box[m['seq']]} and {m}")
        self.seen_ids.add(m["message_id"])
        box[m["seq"]] = m

    def note_own(self, conversation_id: str, sent: dict, body: str) -> None:
        """File one of our own messages from its `sent` frame (we get no `message` for it)."""
        self._file({
            "conversation_id": conversation_id, "message_id": sent["message_id"],
            "seq": sent["seq"], "sender_id": self.user_id, "body": body,
            "created_at": sent["created_at"], "client_msg_id": sent["client_msg_id"],
        }, live=False)

    def last_seq(self, conversation_id: str) -> int:
        """The highest `seq` held with nothing missing below it."""
        box = self.messages.get(conversation_id, {})
        s = 0
        while s + 1 in box:
            s += 1
        return s

    async def fetch_history(self, conversation_id: str, after_seq: Optional[int] = None,
                            until_seq: Optional[int] = None, wait_s: float = 5.0) -> list[dict]:
        """History after `after_seq` (default: the last contiguous `seq` held). With
        `until_seq`, polls briefly until history reaches it (history trails live delivery)."""
        after = self.last_seq(conversation_id) if after_seq is None else after_seq
        deadline = time.monotonic() + wait_s
        while True:
            page = await asyncio.to_thread(self.rest.history_all, conversation_id, after)
            for m in page:
                self._file(m, live=False)
            if until_seq is None or self.last_seq(conversation_id) >= until_seq \
                    or time.monotonic() > deadline:
                return page
            await asyncio.sleep(0.1)

    async def resync(self) -> None:
        for conv in list(self.messages):
            await self.fetch_history(conv)

    # ---- sending ----------------------------------------------------------------------------

    async def send(self, conversation_id: str, body: str, client_msg_id: Optional[str] = None,
                   *, answer_timeout: float = 5.0, attempts: int = 6) -> dict:
        """Send until `sent`: the same `client_msg_id` every time (section 5, rule 1)."""
        cmid = client_msg_id or new_client_msg_id()
        delay = 0.1
        for attempt in range(attempts):
            if self.conn is None or self.conn.closed is not None:
                await self.reconnect()
            try:
                sent = await self.conn.send_and_wait(conversation_id, body, cmid, answer_timeout)
                self.note_own(conversation_id, sent, body)
                return sent
            except FrameError as e:
                if e.code not in ("unavailable", "rate_limited") or attempt == attempts - 1:
                    raise
            except (asyncio.TimeoutError, ConnectionError,
                    websockets.exceptions.ConnectionClosed):
                if attempt == attempts - 1:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")
