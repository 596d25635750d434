#!/usr/bin/env python3
"""Runs a few users through everything docs/protocol.md promises, with the independent client.

    python3 scenario.py --base-url http://127.0.0.1:8080 [--secret SB_JWT_SECRET]

Every check is a promise of the document (section noted). Prints one line per check and a
summary; exits 1 on any mismatch, 2 when the system cannot be reached at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import switchboard_client as sb  # noqa: E402
from switchboard_client import (  # noqa: E402
    ApiError,
    Client,
    ConnectRefused,
    Connection,
    FrameError,
    Rest,
    RFC3339_MS_UTC_RE,
    RFC3339_RE,
    ULID_RE,
    mint_hs256,
    new_client_msg_id,
)


class Checks:
    def __init__(self):
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.notes: list[str] = []
        self.section = ""

    def check(self, cond: bool, what: str, detail: object = "") -> bool:
        name = f"[{self.section}] {what}"
        if cond:
            self.passed.append(name)
            print(f"  ok    {what}", flush=True)
        else:
            self.failed.append(f"{name}: {detail}")
            print(f"  FAIL  {what}: {detail}", flush=True)
        return cond

    def eq(self, got, want, what: str) -> bool:
        return self.check(got == want, what, f"got {got!r}, want {want!r}")

    def note(self, text: str) -> None:
        self.notes.append(f"[{self.section}] {text}")
        print(f"  note  {text}", flush=True)


C = Checks()


def api_status(fn, *a, **kw):
    """(status, code) of a REST call expected to fail; (200, None) if it succeeded."""
    try:
        fn(*a, **kw)
        return 200, None
    except ApiError as e:
        return e.status, e.code


async def expect_error(conn: Connection, what: str, code: str, cmid: str | None = None,
                       timeout: float = 5.0) -> dict | None:
    try:
        if cmid is not None:
            f = await conn.wait_for(lambda f: f.get("client_msg_id") == cmid
                                    and f.get("type") in ("sent", "error"), timeout)
        else:
            f = await conn.wait_type("error", timeout)
    except Exception as e:  # noqa: BLE001
        C.check(False, f"{what}: error frame {code}", repr(e))
        return None
    ok = f.get("type") == "error" and f.get("code") == code
    C.check(ok, f"{what}: error frame {code}", f)
    if ok and cmid is not None:
        C.eq(f.get("client_msg_id"), cmid, f"{what}: error carries its client_msg_id")
    return f


async def still_usable(conn: Connection, what: str) -> None:
    try:
        await conn.ping(5)
        C.check(True, f"{what}: connection stays usable (ping -> pong)")
    except Exception as e:  # noqa: BLE001
        C.check(False, f"{what}: connection stays usable (ping -> pong)", repr(e))


async def quiet(seconds: float) -> None:
    await asyncio.sleep(seconds)


def check_message_fields(m: dict, what: str, *, history: bool = False) -> None:
    fields = {"conversation_id", "message_id", "seq", "sender_id", "body", "created_at"}
    if history:
        fields.add("client_msg_id")
    else:
        fields.add("type")
    missing = fields - set(m)
    C.check(not missing, f"{what}: has the documented fields", f"missing {missing} in {m}")
    C.check(bool(ULID_RE.match(str(m.get("message_id")))), f"{what}: message_id is a ULID",
            m.get("message_id"))
    C.check(bool(RFC3339_MS_UTC_RE.match(str(m.get("created_at")))),
            f"{what}: created_at is RFC 3339 UTC with milliseconds", m.get("created_at"))


def contiguous(seqs: list[int], start: int = 1) -> bool:
    return seqs == list(range(start, start + len(seqs)))


# ------------------------------------------------------------------------------------------


async def run(base: str, secret: str | None, long_checks: bool,
              allowed_origin: str | None = None, disallowed_origin: str | None = None) -> None:
    run_id = uuid.uuid4().hex[:8]
    u = lambda name: f"{name}-{run_id}"  # noqa: E731
    alice_id, bob_id, carol_id = u("alice"), u("bob"), u("carol")
    dave_id, erin_id, frank_id, stranger_id = u("dave"), u("erin"), u("frank"), u("stranger")
    anon = Rest(base)

    # ---------------------------------------------------------------- 1. tokens
    C.section = "1 tokens"
    print("== 1. tokens", flush=True)
    resp = anon.raw("POST", "/api/v1/dev/token", {"user_id": alice_id}, auth=False)
    C.eq(resp.status, 200, "POST /api/v1/dev/token answers 200")
    dt = resp.json() or {}
    C.eq(sorted(dt), ["expires_at", "token", "user_id"], "dev token fields")
    C.eq(dt.get("user_id"), alice_id, "dev token user_id")
    C.check(bool(RFC3339_RE.match(str(dt.get("expires_at")))), "expires_at is RFC 3339",
            dt.get("expires_at"))
    alice_token = dt["token"]
    header, claims = sb.decode_jwt_unverified(alice_token)
    C.eq(claims.get("sub"), alice_id, "dev token's sub is the user id")
    C.check("exp" in claims, "dev token has exp", claims)

    st, code = api_status(anon.dev_token, "not a valid id!")
    C.check((st, code) == (400, "bad_request"), "dev token for an invalid user id: 400 bad_request",
            (st, code))
    resp = anon.raw("POST", "/api/v1/dev/token", raw_body=b"{not json", auth=False)
    C.check((resp.status, sb.api_error(resp).code) == (400, "bad_request"),
            "dev token with malformed JSON: 400 bad_request",
            (resp.status, resp.body[:200]))

    if secret:
        bob_token = mint_hs256(secret, bob_id)
        C.note("bob's token is minted here: HS256 with the shared secret (stdlib hmac)")
    else:
        bob_token = anon.dev_token(bob_id)["token"]
        C.note("no --secret: every token comes from the dev-token route")
    carol_token = anon.dev_token(carol_id)["token"]
    tok = {alice_id: alice_token, bob_id: bob_token, carol_id: carol_token}
    for name in (dave_id, erin_id, frank_id, stranger_id):
        tok[name] = mint_hs256(secret, name) if secret else anon.dev_token(name)["token"]

    rest = {k: Rest(base, v) for k, v in tok.items()}
    C.eq(rest[bob_id].raw("GET", "/api/v1/conversations").status, 200,
         "bob's token is accepted by REST")

    resp = anon.raw("GET", "/api/v1/conversations")
    C.check((resp.status, sb.api_error(resp).code) == (401, "unauthorized"),
            "REST without a token: 401 unauthorized", (resp.status, resp.body[:200]))
    bad_tokens = {"malformed": "not.a.jwt"}
    if secret:
        now = int(time.time())
        bad_tokens.update({
            "wrongly signed": mint_hs256(secret + "x", bob_id),
            "expired": mint_hs256(secret, bob_id, iat=now - 7200, exp=now - 120),
            "nbf 2 min ahead": mint_hs256(secret, bob_id, nbf=now + 120),
            "no exp": _mint_without_exp(secret, bob_id),
            "no iat": _mint_without_exp(secret, bob_id, exp=now + 600),
            "non-integer exp": mint_hs256(secret, bob_id, exp=now + 600.5),
        })
        skew_ok = mint_hs256(secret, bob_id, nbf=now + 10)
        C.eq(Rest(base, skew_ok).raw("GET", "/api/v1/conversations").status, 200,
             "a token with nbf 10 s ahead is accepted (30 s of clock skew)")
        # Expired within the skew: still accepted.
        recent = mint_hs256(secret, bob_id, iat=now - 600, exp=now - 10)
        C.eq(Rest(base, recent).raw("GET", "/api/v1/conversations").status, 200,
             "a token expired 10 s ago is accepted (30 s of clock skew)")
        # RFC 7519: `aud` may be an array (identity providers issue them); with no audience
        # configured it is not checked, whichever shape it has.
        aud_array = mint_hs256(secret, bob_id, extra={"aud": ["some-api", "https://idp/userinfo"]})
        C.eq(Rest(base, aud_array).raw("GET", "/api/v1/conversations").status, 200,
             "a token whose aud is an array is accepted")
    for what, t in bad_tokens.items():
        resp = Rest(base, t).raw("GET", "/api/v1/conversations")
        C.check((resp.status, sb.api_error(resp).code) == (401, "unauthorized"),
                f"REST with a {what} token: 401 unauthorized", (resp.status, resp.body[:200]))

    # Identity-provider style ids.
    pipe_id, mail_id = f"auth0|{run_id}", f"ann+{run_id}@example.com"
    for uid in (pipe_id, mail_id):
        t = mint_hs256(secret, uid) if secret else anon.dev_token(uid)["token"]
        tok[uid] = t
        rest[uid] = Rest(base, t)
        C.eq(rest[uid].raw("GET", "/api/v1/conversations").status, 200,
             f"user id {uid!r} is accepted")

    # ---------------------------------------------------------------- 2. registry
    C.section = "2 registry"
    print("== 2. finding a socket server", flush=True)
    a = anon.socket_server()
    C.check(True, "GET /api/v1/socket-server needs no token")
    C.check({"server_id", "url", "connections", "max_connections"} <= set(a),
            "GET /api/v1/socket-server fields", a)
    C.check(str(a.get("url", "")).startswith("ws://") or str(a.get("url", "")).startswith("wss://"),
            "the url is a ws:// url", a.get("url"))
    servers = rest[alice_id].socket_servers()
    C.check(len(servers) >= 1, "GET /api/v1/socket-servers lists servers", servers)
    for s in servers:
        C.check({"server_id", "url", "connections", "max_connections", "last_heartbeat"} <= set(s),
                "socket-servers entry fields", s)
    conns = [s.get("connections", 0) / max(1, s.get("max_connections", 1)) for s in servers]
    raw_conns = [s.get("connections", 0) for s in servers]
    C.check(raw_conns == sorted(raw_conns) or conns == sorted(conns),
            "socket-servers are listed least loaded first", servers)

    # ---------------------------------------------------------------- 3. websocket auth
    C.section = "3 websocket"
    print("== 3. the WebSocket protocol: connecting", flush=True)
    url = a["url"]
    for what, t in [("no", None)] + list(bad_tokens.items()):
        try:
            if t is None:
                c = await Connection.open(url, "", use_header=True, headers={})
            else:
                c = await Connection.open(url, t)
            await c.close()
            C.check(False, f"WebSocket with a {what} token is refused with 401", "it connected")
        except ConnectRefused as e:
            C.eq(e.status, 401, f"WebSocket with a {what} token is refused with 401")
        except Exception as e:  # noqa: BLE001
            C.check(False, f"WebSocket with a {what} token is refused with 401", repr(e))

    alice = Client(base, alice_id, alice_token)
    bob = Client(base, bob_id, bob_token, use_header=True)
    carol = Client(base, carol_id, carol_token)
    await alice.connect()
    C.eq(alice.conn.hello.get("user_id"), alice_id, "hello (token in ?token=) names the user")
    C.eq(alice.conn.hello.get("server_id"), alice.assignment["server_id"],
         "hello names the server the registry gave")
    await bob.connect()
    C.eq(bob.conn.hello.get("user_id"), bob_id,
         "hello (token in an Authorization header) names the user")
    await carol.connect()
    await still_usable(alice.conn, "ping")
    pong = [f for f in alice.conn.all_frames if f.get("type") == "pong"]
    C.check(bool(pong) and set(pong[-1]) == {"type"}, "pong has no other fields", pong[-1:])

    # Long check, in the background: a connection that sends nothing for 17 s is kept (the
    # server's pings are answered by the WebSocket library).
    idle_task = silent_task = None
    if long_checks:
        idle_task = asyncio.create_task(_idle_connection(url, tok[alice_id]))
        silent_task = asyncio.create_task(_silent_client(url, tok[alice_id]))

    if disallowed_origin:
        try:
            c = await Connection.open(url, alice_token, headers={"Origin": disallowed_origin})
            await c.close()
            C.check(False, f"an upgrade from origin {disallowed_origin} is refused", "it connected")
        except ConnectRefused as e:
            C.check((e.status, e.error_code()) == (403, "forbidden"),
                    f"an upgrade from a disallowed origin: 403 forbidden",
                    (e.status, e.body[:200]))
    if allowed_origin:
        try:
            c = await Connection.open(url, alice_token, headers={"Origin": allowed_origin})
            C.check(True, "an upgrade from an allowed origin connects")
            await c.close()
        except Exception as e:  # noqa: BLE001
            C.check(False, "an upgrade from an allowed origin connects", repr(e))

    # ---------------------------------------------------------------- 4. conversations
    C.section = "4 conversations"
    print("== 4. conversations", flush=True)
    resp = rest[alice_id].raw("POST", "/api/v1/conversations",
                              {"kind": "direct", "members": [bob_id]})
    C.eq(resp.status, 201, "creating a direct conversation answers 201")
    direct = resp.json() or {}
    C.check({"id", "kind", "name", "members"} <= set(direct), "direct conversation fields", direct)
    C.eq(direct.get("kind"), "direct", "kind is direct")
    C.eq(sorted(direct.get("members", [])), sorted([alice_id, bob_id]),
         "the caller is a member of the direct conversation")
    resp = rest[alice_id].raw("POST", "/api/v1/conversations",
                              {"kind": "direct", "members": [bob_id]})
    C.eq(resp.status, 200, "the same direct conversation again answers 200")
    again = resp.json() or {}
    C.eq(direct.get("name"), None, "a direct conversation's name is null")
    C.eq(again.get("id"), direct.get("id"), "the same pair again answers the same conversation")
    other_side = rest[bob_id].create_direct(alice_id)
    C.eq(other_side.get("id"), direct.get("id"),
         "the same pair from the other side answers the same conversation")
    d = direct["id"]

    resp = rest[alice_id].raw("POST", "/api/v1/conversations",
                              {"kind": "group", "name": "team", "members": [bob_id, carol_id]})
    C.eq(resp.status, 201, "creating a group answers 201")
    group = resp.json() or {}
    C.eq(group.get("kind"), "group", "kind is group")
    C.eq(group.get("name"), "team", "group name")
    C.eq(sorted(group.get("members", [])), sorted([alice_id, bob_id, carol_id]),
         "group members include the creator")
    C.eq(group.get("roles"), {alice_id: "owner", bob_id: "member", carol_id: "member"},
         "group roles: the creator is the owner")
    g = group["id"]

    big = [f"m{i}-{run_id}" for i in range(1001)]
    st, code = api_status(rest[alice_id].create_group, "big", big)
    C.check((st, code) == (413, "too_large"), "a group over 1,000 members: 413 too_large",
            (st, code))
    ok_big = [f"m{i}-{run_id}" for i in range(999)]  # + the creator = 1,000
    st, _ = api_status(rest[alice_id].create_group, "big-ok", ok_big)
    C.eq(st, 200, "a group of exactly 1,000 members (creator included) is accepted")
    for what, body in [
        ("a group without a name", {"kind": "group", "members": [bob_id]}),
        ("a direct conversation with two others", {"kind": "direct",
                                                   "members": [bob_id, carol_id]}),
        ("an unknown kind", {"kind": "channel", "members": [bob_id]}),
        ("an invalid member id", {"kind": "group", "name": "x", "members": ["not valid!"]}),
    ]:
        resp = rest[alice_id].raw("POST", "/api/v1/conversations", body)
        C.check((resp.status, sb.api_error(resp).code) == (400, "bad_request"),
                f"{what}: 400 bad_request", (resp.status, resp.body[:200]))
    resp = rest[alice_id].raw("POST", "/api/v1/conversations", raw_body=b"{nope")
    C.check((resp.status, sb.api_error(resp).code) == (400, "bad_request"),
            "a malformed conversation body: 400 bad_request", (resp.status, resp.body[:200]))
    resp = rest[alice_id].raw("GET", "/api/v1/no-such-route")
    C.check((resp.status, sb.api_error(resp).code) == (404, "not_found"),
            "an unknown route: 404 not_found in the error envelope",
            (resp.status, resp.body[:200]))

    # ---------------------------------------------------------------- 3. send / receive
    C.section = "3 send"
    print("== 3. send, sent, message", flush=True)
    alice2 = await Connection.open(alice.assignment["url"], alice_token)  # alice's 2nd device
    cmid1 = new_client_msg_id()
    sent1 = await alice.send(d, "hello bob", cmid1)
    C.eq(sorted(sent1), sorted(["type", "client_msg_id", "conversation_id", "message_id", "seq",
                                 "created_at"]), "sent has the documented fields")
    C.eq(sent1.get("seq"), 1, "a new conversation's first seq is 1")
    C.check(bool(ULID_RE.match(sent1.get("message_id", ""))), "sent.message_id is a ULID", sent1)
    C.check(bool(RFC3339_MS_UTC_RE.match(sent1.get("created_at", ""))),
            "sent.created_at is RFC 3339 UTC with ms", sent1)
    m = await bob.wait_message(lambda m: m["message_id"] == sent1["message_id"], 10)
    check_message_fields(m, "message frame")
    C.eq((m["seq"], m["sender_id"], m["body"], m["conversation_id"], m["created_at"]),
         (1, alice_id, "hello bob", d, sent1["created_at"]),
         "bob's message frame matches alice's sent")
    try:
        m2 = await alice2.wait_type("message", 10, message_id=sent1["message_id"])
        C.eq(m2["seq"], 1, "the sender's other device gets the message frame")
    except Exception as e:  # noqa: BLE001
        C.check(False, "the sender's other device gets the message frame", repr(e))
    await quiet(0.5)
    C.check(not any(f.get("type") == "message" and f.get("message_id") == sent1["message_id"]
                    for f in alice.conn.all_frames),
            "the sending device gets sent, not message")

    # The sender is the token's sub, whatever the frame says.
    cmid_spoof = new_client_msg_id()
    await alice.conn.send_json({"type": "send", "conversation_id": d, "client_msg_id": cmid_spoof,
                                "body": "spoof?", "sender_id": bob_id})
    f = await alice.conn.wait_for(lambda f: f.get("client_msg_id") == cmid_spoof, 10)
    if f.get("type") == "sent":
        alice.note_own(d, f, "spoof?")
        m = await bob.wait_message(lambda m: m["message_id"] == f["message_id"], 10)
        C.eq(m["sender_id"], alice_id, "a sender_id in the send frame is ignored")
    else:
        C.check(False, "a send with an extra sender_id field is accepted (sender = sub)", f)

    # ---------------------------------------------------------------- idempotency
    C.section = "3 idempotency"
    print("== idempotency", flush=True)
    resent = await alice.conn.send_and_wait(d, "hello bob", cmid1)
    C.eq((resent["message_id"], resent["seq"], resent["created_at"]),
         (sent1["message_id"], sent1["seq"], sent1["created_at"]),
         "resending the same client_msg_id answers the same message_id, seq and created_at")
    other_body = await alice.conn.send_and_wait(d, "a different body", cmid1)
    C.eq(other_body["message_id"], sent1["message_id"],
         "a resend is matched by client_msg_id alone (its body is not compared)")
    sent3 = await alice.send(d, "second", new_client_msg_id())
    C.eq(sent3["seq"], alice.last_seq(d), "the next new message takes the next seq")
    await bob.wait_message(lambda m: m["message_id"] == sent3["message_id"], 10)
    bob_copies = [m for m in bob.live if m["message_id"] == sent1["message_id"]]
    if len(bob_copies) > 1:
        C.note(f"bob got the resent message {len(bob_copies)} times live (allowed: "
               "at-least-once; deduped by message_id)")
    hist = await _history_until(rest[bob_id], d, sent3["seq"])
    C.eq([m["client_msg_id"] for m in hist].count(cmid1), 1,
         "the resent message is stored once")
    C.check(contiguous([m["seq"] for m in hist]), "history seq is 1..N without gaps",
            [m["seq"] for m in hist])
    if hist:
        check_message_fields(hist[0], "history entry", history=True)
        C.eq(hist[0].get("client_msg_id"), cmid1, "history carries the client_msg_id")

    # ---------------------------------------------------------------- ordering
    C.section = "5 order"
    print("== order: two senders, pipelined, into the group", flush=True)
    n_each = 60
    a_ids = [new_client_msg_id() for _ in range(n_each)]
    b_ids = [new_client_msg_id() for _ in range(n_each)]

    async def pipeline(client: Client, ids: list[str], tag: str) -> list[dict]:
        for i, cmid in enumerate(ids):
            await client.conn.send_message(g, f"{tag} {i}", cmid)
            if i % 20 == 19:
                await asyncio.sleep(0.15)  # stay under the frame rate
        out = []
        for i, cmid in enumerate(ids):
            s = await client.conn.wait_sent(cmid, 15)
            client.note_own(g, s, f"{tag} {i}")
            out.append(s)
        return out

    a_sent, b_sent = await asyncio.gather(pipeline(alice, a_ids, "a"), pipeline(bob, b_ids, "b"))
    all_seqs = sorted(s["seq"] for s in a_sent + b_sent)
    C.eq(all_seqs, list(range(1, 2 * n_each + 1)),
         "120 concurrent sends take seq 1..120, each once")
    a_order = [s["seq"] for s in a_sent]
    if a_order != sorted(a_order):
        C.note("one connection's pipelined sends were not numbered in send order")
    total = 2 * n_each
    try:
        await carol.wait_message(lambda m: m["conversation_id"] == g and m["seq"] == total, 15)
    except asyncio.TimeoutError:
        pass
    carol_live = [m["seq"] for m in carol.live if m["conversation_id"] == g]
    C.check(carol_live == sorted(carol_live) and len(set(carol_live)) == len(carol_live),
            "carol's live message frames come in rising seq, no repeats", carol_live)
    if carol_live != list(range(1, total + 1)):
        C.note(f"carol's live stream had gaps ({len(carol_live)} of {total}); fetched history")
    await carol.fetch_history(g, until_seq=total)
    C.eq(sorted(carol.messages.get(g, {})), list(range(1, total + 1)),
         "carol holds seq 1..120 (live + history), no gap, no duplicate")
    for who in (alice, bob):
        live = [m["seq"] for m in who.live if m["conversation_id"] == g]
        C.check(live == sorted(live), f"{who.user_id.split('-')[0]}'s live frames rise", live)
        await who.fetch_history(g, until_seq=total)
        C.eq(sorted(who.messages.get(g, {})), list(range(1, total + 1)),
             f"{who.user_id.split('-')[0]} holds seq 1..120 (own sent + live + history)")
    for who in (alice, bob, carol):
        C.check(not who.live_order_violations, f"{who.user_id.split('-')[0]}: no out-of-order frame",
                who.live_order_violations)

    # ---------------------------------------------------------------- 4. history paging
    C.section = "4 history"
    print("== history paging", flush=True)
    h = await _history_until(rest[carol_id], g, total)
    C.eq([m["seq"] for m in h], list(range(1, total + 1)), "history: ascending seq 1..120")
    by_cmid = {m["client_msg_id"]: m for m in h}
    C.check(all(by_cmid.get(c, {}).get("sender_id") == alice_id for c in a_ids)
            and all(by_cmid.get(c, {}).get("sender_id") == bob_id for c in b_ids),
            "history: every client_msg_id stored once, with its sender", len(by_cmid))
    C.check(all(by_cmid.get(s["client_msg_id"], {}).get("message_id") == s["message_id"]
                for s in a_sent + b_sent), "history: message_id and seq match the sent frames")
    default_page = rest[carol_id].history(g)
    C.eq([m["seq"] for m in default_page], list(range(1, 101)),
         "history without parameters: after_seq 0, limit 100")
    page = rest[carol_id].history(g, after_seq=50, limit=7)
    C.eq([m["seq"] for m in page], list(range(51, 58)), "after_seq=50&limit=7 -> 51..57")
    C.eq(len(rest[carol_id].history(g, after_seq=0, limit=1000)), total, "limit=1000 allowed")
    resp = rest[carol_id].raw("GET", f"/api/v1/conversations/{g}/messages",
                              query=[("limit", "5000")])
    C.eq(resp.status, 200, "limit over 1,000 answers 200 (capped to 1,000)")
    for what, q in [("limit=0", [("limit", "0")]), ("after_seq=-1", [("after_seq", "-1")]),
                    ("limit=abc", [("limit", "abc")])]:
        resp = rest[carol_id].raw("GET", f"/api/v1/conversations/{g}/messages", query=q)
        C.check((resp.status, sb.api_error(resp).code) == (400, "bad_request"),
                f"history with {what}: 400 bad_request", (resp.status, resp.body[:200]))
    st, code = api_status(rest[dave_id].history, d)
    C.check((st, code) == (403, "not_a_member"), "history of someone else's conversation: "
            "403 not_a_member", (st, code))
    ghost = "01" + uuid.uuid4().hex[:24].upper().replace("I", "J").replace("L", "K") \
        .replace("O", "P").replace("U", "V")
    st, code = api_status(rest[alice_id].history, ghost)
    C.check((st, code) == (403, "not_a_member"),
            "history of a conversation that does not exist: 403 not_a_member", (st, code))

    # ---------------------------------------------------------------- receipts
    C.section = "3 receipts"
    print("== receipts", flush=True)
    last_d = alice.last_seq(d)
    await bob.conn.delivered(d, last_d)
    try:
        r = await alice.conn.wait_type("receipt", 10, kind="delivered", user_id=bob_id)
        C.eq(r, {"type": "receipt", "conversation_id": d, "user_id": bob_id, "kind": "delivered",
                 "seq": last_d}, "alice gets bob's delivered receipt")
    except Exception as e:  # noqa: BLE001
        C.check(False, "alice gets bob's delivered receipt", repr(e))
    await bob.conn.read(d, last_d)
    try:
        r = await alice.conn.wait_type("receipt", 10, kind="read", user_id=bob_id)
        C.eq(r, {"type": "receipt", "conversation_id": d, "user_id": bob_id, "kind": "read",
                 "seq": last_d}, "alice gets bob's read receipt")
    except Exception as e:  # noqa: BLE001
        C.check(False, "alice gets bob's read receipt", repr(e))
    await carol.conn.read(g, 100)
    for who in (alice, bob):
        try:
            r = await who.conn.wait_type("receipt", 10, kind="read", user_id=carol_id)
            C.eq((r["conversation_id"], r["seq"]), (g, 100),
                 f"{who.user_id.split('-')[0]} gets carol's group read receipt")
        except Exception as e:  # noqa: BLE001
            C.check(False, f"{who.user_id.split('-')[0]} gets carol's group read receipt", repr(e))
    await alice.conn.read(d, last_d)
    for who, c in (("bob", bob.conn), ("alice's other device", alice2)):
        try:
            await c.wait_type("receipt", 10, kind="read", user_id=alice_id, conversation_id=d)
            C.check(True, f"{who} gets alice's read receipt")
        except Exception as e:  # noqa: BLE001
            C.check(False, f"{who} gets alice's read receipt", repr(e))
    await quiet(0.5)
    C.check(not [f for f in alice.conn.all_frames if f.get("type") == "receipt"
                 and f.get("user_id") == alice_id], "the sending device gets no receipt back")
    own = [f for f in bob.conn.all_frames if f.get("type") == "receipt" and f.get("user_id") == bob_id]
    C.check(not own, "a member's own device does not get its own receipt back", own)

    convs = await _conversations_until(rest[alice_id], d, bob_id, last_d)
    entry = next((c for c in convs if c.get("id") == d), None)
    C.check(entry is not None and {"id", "kind", "name", "members", "last_seq", "unread",
                                   "receipts"} <= set(entry or {}),
            "GET /api/v1/conversations entry fields", entry)
    if entry:
        C.eq(entry.get("last_seq"), last_d, "last_seq is the conversation's last seq")
        rec = _receipt_of(entry.get("receipts"), bob_id)
        C.eq(rec, (last_d, last_d), "receipts carry bob's delivered_seq and read_seq")
        C.check(isinstance(entry.get("receipts"), list) and all(
            set(r) == {"user_id", "delivered_seq", "read_seq"} for r in entry["receipts"]),
            "receipts is a list of {user_id, delivered_seq, read_seq}", entry.get("receipts"))
        gentry = next((c for c in convs if c.get("id") == g), {})
        C.check(_receipt_of(gentry.get("receipts"), bob_id) is None
                and _receipt_of(gentry.get("receipts"), carol_id) == (100, 100),
                "a member who never sent a receipt is not listed", gentry.get("receipts"))
    aentry = next((c for c in convs if c.get("id") == d), {})
    C.eq(aentry.get("unread"), 0, "alice's own messages are not unread to her")
    bconvs = rest[bob_id].conversations()
    bentry = next((c for c in bconvs if c.get("id") == d), {})
    C.eq(bentry.get("unread"), 0, "bob's unread in the direct conversation after read is 0")
    centry = next((c for c in rest[carol_id].conversations() if c.get("id") == g), {})
    C.eq(centry.get("unread"), total - 100,
         "carol's unread in the group: others' messages past her read_seq")
    C.eq(_receipt_of(centry.get("receipts"), carol_id), (100, 100),
         "a read receipt raises delivered_seq too")

    # Receipts are cumulative: a lower seq afterwards does not move them back.
    await bob.conn.read(d, 1)
    await quiet(0.7)
    entry = next((c for c in rest[alice_id].conversations() if c.get("id") == d), {})
    C.eq(_receipt_of(entry.get("receipts"), bob_id), (last_d, last_d),
         "a lower read seq does not move the cumulative receipt back")

    # ---------------------------------------------------------------- typing
    C.section = "3 typing"
    print("== typing", flush=True)
    await alice.conn.typing(g)
    for who in (bob, carol):
        try:
            t = await who.conn.wait_type("typing", 10, user_id=alice_id)
            C.eq(t, {"type": "typing", "conversation_id": g, "user_id": alice_id},
                 f"{who.user_id.split('-')[0]} gets alice's typing")
        except Exception as e:  # noqa: BLE001
            C.check(False, f"{who.user_id.split('-')[0]} gets alice's typing", repr(e))
    await quiet(0.3)
    C.check(not [f for f in alice.conn.all_frames if f.get("type") == "typing"],
            "the typer does not get its own typing back")
    C.eq(len(rest[alice_id].history(g, after_seq=total)), 0, "typing is not stored")

    # ---------------------------------------------------------------- presence
    C.section = "3 presence"
    print("== presence", flush=True)
    rest[alice_id].create_direct(erin_id)
    erin = Client(base, erin_id, tok[erin_id])
    await erin.connect()
    try:
        p = await alice.conn.wait_type("presence", 10, user_id=erin_id, status="online")
        C.check({"type", "user_id", "status", "last_seen"} <= set(p), "presence frame fields", p)
        C.check(p.get("last_seen") is None or RFC3339_RE.match(str(p.get("last_seen"))),
                "presence last_seen is RFC 3339", p)
    except Exception as e:  # noqa: BLE001
        C.check(False, "alice sees erin come online", repr(e))
    pr = rest[alice_id].presence([erin_id, alice_id])
    st_by = {x["user_id"]: x for x in pr}
    C.eq((st_by.get(erin_id, {}).get("status"), st_by.get(alice_id, {}).get("status")),
         ("online", "online"), "GET /api/v1/presence: erin and alice online")
    C.check(all({"user_id", "status", "last_seen"} <= set(x) for x in pr),
            "presence entries have user_id, status, last_seen", pr)
    await erin.disconnect()
    try:
        p = await alice.conn.wait_type("presence", 15, user_id=erin_id, status="offline")
        C.check(bool(RFC3339_RE.match(str(p.get("last_seen")))),
                "alice sees erin go offline, with last_seen", p)
    except Exception as e:  # noqa: BLE001
        C.check(False, "alice sees erin go offline", repr(e))
    pr = {x["user_id"]: x for x in rest[alice_id].presence([erin_id])}
    C.eq(pr.get(erin_id, {}).get("status"), "offline", "GET /api/v1/presence: erin offline")
    resp = rest[alice_id].raw("GET", "/api/v1/presence")
    C.check((resp.status, sb.api_error(resp).code) == (400, "bad_request"),
            "a presence query naming nobody: 400 bad_request", (resp.status, resp.body[:200]))
    rest[alice_id].create_direct(frank_id)
    pf = {x["user_id"]: x for x in rest[alice_id].presence([frank_id])}.get(frank_id, {})
    C.check(pf.get("status") == "offline" and pf.get("last_seen") is None,
            "a member who never connected: offline, last_seen null", pf)
    st, code = api_status(rest[alice_id].presence, [stranger_id])
    C.check((st, code) == (403, "forbidden"), "presence of a stranger: 403 forbidden", (st, code))
    st, code = api_status(rest[alice_id].presence, [bob_id, stranger_id])
    C.check((st, code) == (403, "forbidden"),
            "a presence query naming a stranger is refused whole", (st, code))
    C.check(not [f for f in alice.conn.all_frames if f.get("type") == "presence"
                 and f.get("user_id") == stranger_id], "no presence of strangers")

    # ---------------------------------------------------------------- bad frames
    C.section = "3 errors"
    print("== error frames", flush=True)
    conn = alice.conn
    before = alice.last_seq(d)

    async def bad(what: str, code: str, *, frame=None, text=None, binary=None,
                  cmid: str | None = None, carries_cmid: bool = True, late: bool = False):
        """Send one bad frame, then a ping as a barrier: exactly one `error` with `code`
        (carrying `cmid` when given) and no `sent` come back before the `pong`."""
        if frame is not None:
            await conn.send_json(frame)
        elif text is not None:
            await conn.send_text(text)
        else:
            await conn.send_binary(binary)
        got = []
        if cmid is not None:
            try:  # a refused send may be answered after later frames: wait for it first
                got.append(await conn.wait_for(lambda f: f.get("type") in ("sent", "error")
                                               and f.get("client_msg_id") == cmid, 10))
            except Exception as e:  # noqa: BLE001
                C.check(False, f"{what}: answered", repr(e))
        elif late:
            try:  # checked after a round trip to the managers: may come after a later pong
                got.append(await conn.wait_type("error", 10, code=code))
            except Exception as e:  # noqa: BLE001
                C.check(False, f"{what}: answered", repr(e))
        await conn.send_json({"type": "ping"})
        try:
            while True:
                f = await conn.wait_for(lambda f: f.get("type") in ("sent", "error", "pong"), 5)
                if f["type"] == "pong":
                    break
                got.append(f)
        except Exception as e:  # noqa: BLE001
            C.check(False, f"{what}: the connection answers the next ping", repr(e))
        errors = [f for f in got if f["type"] == "error"]
        C.check(len(got) == 1 and errors and errors[0].get("code") == code,
                f"{what}: exactly one error frame {code}", got)
        if errors and carries_cmid and cmid is not None:
            C.eq(errors[0].get("client_msg_id"), cmid, f"{what}: the error carries its client_msg_id")
        return errors[0] if errors else None

    await bad("bad JSON", "bad_request", text="{not json")
    await bad("unknown type", "bad_request", frame={"type": "shout", "conversation_id": d})
    await bad("no type", "bad_request", frame={"conversation_id": d})
    await bad("send without body", "bad_request",
              frame={"type": "send", "conversation_id": d, "client_msg_id": new_client_msg_id()})
    await bad("send with a numeric body", "bad_request",
              frame={"type": "send", "conversation_id": d, "client_msg_id": new_client_msg_id(),
                     "body": 5})
    await bad("delivered with a string seq", "bad_request",
              frame={"type": "delivered", "conversation_id": d, "seq": "three"})
    await bad("typing without conversation_id", "bad_request", frame={"type": "typing"})
    await bad("binary frame", "bad_request", binary=b'{"type":"ping"}')
    await bad("a JSON array", "bad_request", text="[1,2]")
    await still_usable(conn, "after bad frames")
    theirs = rest[dave_id].create_direct(frank_id)["id"]
    await bad("typing in someone else's conversation", "not_a_member",
              frame={"type": "typing", "conversation_id": theirs}, late=True)
    await bad("read in someone else's conversation", "not_a_member",
              frame={"type": "read", "conversation_id": theirs, "seq": 1}, late=True)
    past = before + 1000
    await bad("read past the conversation's last message", "bad_request",
              frame={"type": "read", "conversation_id": d, "seq": past}, late=True)
    await bad("delivered past the conversation's last message", "bad_request",
              frame={"type": "delivered", "conversation_id": d, "seq": past}, late=True)

    c1 = new_client_msg_id()
    await bad("body of 64 KiB + 1 byte", "too_large", cmid=c1,
              frame={"type": "send", "conversation_id": d, "client_msg_id": c1,
                     "body": "x" * (64 * 1024 + 1)})
    c2 = new_client_msg_id()
    await bad("body of 64 KiB + 1 byte in 2-byte characters", "too_large", cmid=c2,
              frame={"type": "send", "conversation_id": d, "client_msg_id": c2,
                     "body": "\u00e9" * (32 * 1024) + "x"})
    c3 = new_client_msg_id()
    await bad("body containing U+0000", "bad_request", cmid=c3,
              frame={"type": "send", "conversation_id": d, "client_msg_id": c3, "body": "a\u0000b"})
    c4 = "nul\u0000" + new_client_msg_id()
    await bad("client_msg_id containing U+0000", "bad_request", cmid=c4,
              frame={"type": "send", "conversation_id": d, "client_msg_id": c4, "body": "x"})
    await bad("empty client_msg_id", "bad_request", cmid="",
              frame={"type": "send", "conversation_id": d, "client_msg_id": "", "body": "x"})
    c5 = "c" * 129
    await bad("client_msg_id of 129 bytes", "bad_request", cmid=c5,
              frame={"type": "send", "conversation_id": d, "client_msg_id": c5, "body": "x"})
    c6 = "\u00e9" * 65  # 65 characters, 130 bytes
    await bad("client_msg_id of 65 two-byte characters (130 bytes)", "bad_request", cmid=c6,
              frame={"type": "send", "conversation_id": d, "client_msg_id": c6, "body": "x"})
    c7 = "\u00e9" * 60 + "c" * 8  # 68 characters, 128 bytes
    try:
        s = await alice.send(d, "y" * (64 * 1024), c7)
        C.eq(s["seq"], before + 1, "a 64 KiB body with a 128-byte client_msg_id is accepted, "
             "and the refused sends took no seq")
    except Exception as e:  # noqa: BLE001
        C.check(False, "a 64 KiB body with a 128-byte client_msg_id is accepted", repr(e))

    nm_cmid = new_client_msg_id()
    dave = Client(base, dave_id, tok[dave_id])
    await dave.connect()
    await dave.conn.send_message(d, "let me in", nm_cmid)
    await expect_error(dave.conn, "send to someone else's conversation", "not_a_member", nm_cmid)
    ghost_cmid = new_client_msg_id()
    await dave.conn.send_message(ghost, "anyone?", ghost_cmid)
    await expect_error(dave.conn, "send to a conversation that does not exist", "not_a_member",
                       ghost_cmid)
    await still_usable(dave.conn, "after refused sends")

    # A frame over 256 KiB: too_large and closed with 1009 (own connection).
    huge = await Connection.open(url, tok[dave_id])
    try:
        await huge.send_message(d, "z" * (257 * 1024), new_client_msg_id())
    except Exception:  # noqa: BLE001 - the server may close while we write
        pass
    try:
        code_ = await huge.wait_closed(10)
        errs = [f for f in huge.all_frames if f.get("type") == "error"]
        C.check(any(f.get("code") == "too_large" for f in errs),
                "a frame over 256 KiB gets too_large", huge.all_frames[1:])
        C.eq(code_, 1009, "a frame over 256 KiB closes the connection with 1009")
    except Exception as e:  # noqa: BLE001
        C.check(False, "a frame over 256 KiB closes the connection with 1009", repr(e))
        await huge.close()

    # Rate: 700 frames at once -> beyond the burst of 400, rate_limited.
    burst = await Connection.open(url, tok[dave_id])
    for _ in range(700):
        await burst.send_json({"type": "ping"})
    await quiet(2.0)
    pongs = [f for f in burst.all_frames if f.get("type") == "pong"]
    limited = [f for f in burst.all_frames if f.get("type") == "error"
               and f.get("code") == "rate_limited"]
    C.check(len(limited) > 0, "700 frames at once: some get rate_limited",
            f"{len(pongs)} pongs, {len(limited)} rate_limited, closed={burst.closed!r}")
    C.check(len(pongs) >= 400, "the burst of 400 is allowed", len(pongs))
    C.note(f"burst of 700: {len(pongs)} pongs, {len(limited)} rate_limited")
    await quiet(1.0)
    await still_usable(burst, "after rate limiting")
    await burst.close()

    # ---------------------------------------------------------------- members and roles
    C.section = "4 members"
    print("== members and roles", flush=True)
    ga = rest[alice_id].add_member(g, dave_id)
    C.check(dave_id in ga.get("members", []) and ga.get("roles", {}).get(dave_id) == "member",
            "the owner adds dave: the answer is the group with dave a member", ga)
    st, code = api_status(rest[bob_id].add_member, g, frank_id)
    C.check((st, code) == (403, "forbidden"), "a plain member cannot add: 403 forbidden",
            (st, code))
    gr = rest[alice_id].set_role(g, bob_id, "admin")
    C.eq(gr.get("roles", {}).get(bob_id), "admin", "the owner names bob admin")
    gb = rest[bob_id].add_member(g, frank_id)
    C.check(frank_id in gb.get("members", []), "an admin adds frank", gb)
    st, code = api_status(rest[dave_id].set_role, g, frank_id, "admin")
    C.check((st, code) == (403, "forbidden"), "a member cannot set roles: 403 forbidden",
            (st, code))
    st, code = api_status(rest[bob_id].set_role, g, dave_id, "admin")
    C.check((st, code) == (403, "forbidden"), "an admin cannot set roles: 403 forbidden",
            (st, code))
    st, code = api_status(rest[alice_id].set_role, g, bob_id, "owner")
    C.check((st, code) == (400, "bad_request"), "role \"owner\": 400 bad_request", (st, code))
    st, code = api_status(rest[alice_id].set_role, g, alice_id, "member")
    C.check((st, code) == (400, "bad_request"), "the owner's own role: 400 bad_request",
            (st, code))
    st, code = api_status(rest[bob_id].remove_member, g, alice_id)
    C.check((st, code) == (403, "forbidden"), "an admin cannot remove the owner: 403 forbidden",
            (st, code))
    st, code = api_status(rest[dave_id].remove_member, g, frank_id)
    C.check((st, code) == (403, "forbidden"), "a member cannot remove another: 403 forbidden",
            (st, code))
    st, code = api_status(rest[frank_id].remove_member, g, frank_id)
    C.eq(st, 200, "frank leaves (removes himself): 204")
    st, code = api_status(rest[bob_id].remove_member, g, dave_id)
    C.eq(st, 200, "an admin removes a plain member: 204")
    st, code = api_status(rest[alice_id].remove_member, g, f"nobody-{run_id}")
    C.check((st, code) == (404, "not_found"), "removing a non-member: 404 not_found", (st, code))
    st, code = api_status(rest[alice_id].set_role, g, f"nobody-{run_id}", "admin")
    C.check((st, code) == (404, "not_found"), "the role of a non-member: 404 not_found",
            (st, code))
    st, code = api_status(rest[alice_id].add_member, ghost, frank_id)
    C.check((st, code) == (404, "not_found"), "adding to a conversation that does not exist: "
            "404 not_found", (st, code))
    st, code = api_status(rest[alice_id].add_member, d, frank_id)
    C.check((st, code) == (400, "bad_request"), "adding to a direct conversation: "
            "400 bad_request", (st, code))
    st, code = api_status(rest[alice_id].remove_member, d, bob_id)
    C.check((st, code) == (400, "bad_request"), "removing from a direct conversation: "
            "400 bad_request", (st, code))
    again = rest[alice_id].add_member(g, bob_id)
    C.check(again.get("members", []).count(bob_id) == 1
            and again.get("roles", {}).get(bob_id) == "admin",
            "adding an existing member again changes nothing (200, the group)", again)
    resp = rest[alice_id].raw("PUT", f"/api/v1/conversations/{g}/members/{bob_id}/role",
                              {"role": "king"})
    C.check((resp.status, sb.api_error(resp).code) == (400, "bad_request"),
            "an unknown role: 400 bad_request", (resp.status, resp.body[:200]))

    # Removal takes effect on the next send.
    rest[alice_id].remove_member(g, carol_id)
    C.check(True, "the owner removes carol: 204")
    carol_cmid = new_client_msg_id()
    await carol.conn.send_message(g, "am I still here?", carol_cmid)
    await expect_error(carol.conn, "a removed member's send", "not_a_member", carol_cmid)
    after_rm = await alice.send(g, "carol is gone")
    await bob.wait_message(lambda m: m["message_id"] == after_rm["message_id"], 10)
    await quiet(0.7)
    C.check(not [m for m in carol.live if m["message_id"] == after_rm["message_id"]],
            "a removed member receives nothing more")
    st, code = api_status(rest[carol_id].history, g)
    C.check((st, code) == (403, "not_a_member"), "a removed member's history: 403 not_a_member",
            (st, code))

    # Percent-encoded ids in paths.
    gi = rest[alice_id].create_group("idp", [pipe_id, mail_id])
    C.eq(sorted(gi.get("members", [])), sorted([alice_id, pipe_id, mail_id]),
         "a group with identity-provider style ids")
    st, _ = api_status(rest[alice_id].remove_member, gi["id"], mail_id)
    C.eq(st, 200, "DELETE .../members/{percent-encoded ann+..@example.com}: 204")
    gr = rest[alice_id].set_role(gi["id"], pipe_id, "admin")
    C.eq(gr.get("roles", {}).get(pipe_id), "admin", "PUT .../members/{auth0%7C...}/role")

    # The owner leaves: the longest-standing admin becomes the owner.
    rest[alice_id].remove_member(g, alice_id)
    gnew = rest[bob_id].add_member(g, erin_id)
    C.eq(gnew.get("roles", {}).get(bob_id), "owner",
         "when the owner leaves, the longest-standing admin becomes the owner")
    C.check(alice_id not in gnew.get("members", []), "the owner who left is no member", gnew)

    # ---------------------------------------------------------------- 5. reconnect
    C.section = "5 reconnect"
    print("== reconnect and resync", flush=True)
    await bob.disconnect()
    missed = [await alice.send(d, f"while away {i}") for i in range(5)]
    await bob.connect()
    C.check(bob.conn.hello.get("user_id") == bob_id, "bob reconnects through the registry")
    await bob.fetch_history(d, until_seq=missed[-1]["seq"])
    C.eq(sorted(bob.messages[d]), list(range(1, missed[-1]["seq"] + 1)),
         "after a reconnect, history after the last seq fills everything in")
    # A send whose answer was lost to a disconnect: resend the same client_msg_id.
    lost = new_client_msg_id()
    await bob.conn.send_message(d, "did this make it?", lost)
    await bob.disconnect()
    await bob.connect()
    s = await bob.send(d, "did this make it?", lost)
    hist = await _history_until(rest[alice_id], d, s["seq"])
    C.eq([m["client_msg_id"] for m in hist].count(lost), 1,
         "resent after a reconnect: stored exactly once")
    C.check(contiguous([m["seq"] for m in hist]), "history still 1..N with no gap")
    C.check(not bob.duplicates or all(x["message_id"] in bob.seen_ids for x in bob.duplicates),
            "repeats are recognised by message_id")

    if idle_task is not None:
        C.section = "3 heartbeat"
        print("== heartbeat", flush=True)
        ok, detail = await idle_task
        C.check(ok, "a connection idle for 17 s (pings answered by the library) stays open",
                detail)
        code_, secs, detail = await silent_task
        C.eq(code_, 1001, f"a client that answers no ping is closed with 1001 "
             f"(after {secs:.1f} s; {detail})")

    for c in (alice, bob, carol, dave):
        await c.disconnect()
    await alice2.close()


def _mint_without_exp(secret: str, sub: str, exp: int | None = None) -> str:
    """A token without `exp` (or, given `exp`, without `iat`)."""
    import base64
    import hashlib
    import hmac

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    claims = {"sub": sub, "iat": int(time.time())} if exp is None else {"sub": sub, "exp": exp}
    si = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return si + "." + b64(hmac.new(secret.encode(), si.encode(), hashlib.sha256).digest())


def _receipt_of(receipts, user_id: str):
    """(delivered_seq, read_seq) of a user, whichever shape `receipts` has."""
    if isinstance(receipts, dict):
        r = receipts.get(user_id) or {}
        return r.get("delivered_seq"), r.get("read_seq")
    if isinstance(receipts, list):
        for r in receipts:
            if r.get("user_id") == user_id:
                return r.get("delivered_seq"), r.get("read_seq")
    return None


async def _history_until(rest: Rest, conv: str, seq: int, wait_s: float = 5.0) -> list[dict]:
    """History trails live delivery: poll until it reaches `seq`."""
    deadline = time.monotonic() + wait_s
    while True:
        h = await asyncio.to_thread(rest.history_all, conv, 0)
        if (h and h[-1]["seq"] >= seq) or time.monotonic() > deadline:
            return h
        await asyncio.sleep(0.1)


async def _conversations_until(rest: Rest, conv: str, user: str, seq: int, wait_s: float = 5.0):
    deadline = time.monotonic() + wait_s
    while True:
        convs = await asyncio.to_thread(rest.conversations)
        e = next((c for c in convs if c.get("id") == conv), {})
        if _receipt_of(e.get("receipts"), user) == (seq, seq) or time.monotonic() > deadline:
            return convs
        await asyncio.sleep(0.1)


async def _silent_client(url: str, token: str, limit_s: float = 40.0):
    """A raw WebSocket (stdlib streams, no library) that never answers the server's pings:
    the server must close it with 1001. Returns (close code or None, seconds, detail)."""
    import base64
    import os as _os
    import urllib.parse as up
    u = up.urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port or 80)
    key = base64.b64encode(_os.urandom(16)).decode()
    path = (u.path or "/") + "?token=" + up.quote(token, safe="")
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if b" 101 " not in head.split(b"\r\n")[0]:
        return None, 0.0, head[:100]
    started = time.monotonic()
    pings = 0
    try:
        while time.monotonic() - started < limit_s:
            b0, b1 = await asyncio.wait_for(reader.readexactly(2), limit_s)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:
                pings += 1
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                return code, time.monotonic() - started, f"{pings} pings unanswered"
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        return None, time.monotonic() - started, f"dropped without a close frame: {e!r}"
    except asyncio.TimeoutError:
        pass
    finally:
        writer.close()
    return None, time.monotonic() - started, f"still open, {pings} pings"


async def _idle_connection(url: str, token: str):
    try:
        c = await Connection.open(url, token)
    except Exception as e:  # noqa: BLE001
        return False, repr(e)
    await asyncio.sleep(17)
    if c.closed is not None:
        return False, f"closed with {c.close_code}"
    try:
        await c.ping(5)
    except Exception as e:  # noqa: BLE001
        return False, repr(e)
    await c.close()
    return True, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default=os.environ.get("SB_BASE_URL", "http://127.0.0.1:8080"),
                    help="the public entry point (nginx)")
    ap.add_argument("--secret", default=os.environ.get("SB_JWT_SECRET"),
                    help="the deployment's HS256 secret (SB_JWT_SECRET); without it, dev tokens")
    ap.add_argument("--quick", action="store_true", help="skip the heartbeat checks (17 s)")
    ap.add_argument("--allowed-origin", help="an origin in SB_ALLOWED_ORIGINS, to check")
    ap.add_argument("--disallowed-origin", help="an origin not in SB_ALLOWED_ORIGINS, to check "
                    "that its upgrade is refused (only when the deployment sets the list)")
    args = ap.parse_args()
    started = time.monotonic()
    crashed = None
    try:
        asyncio.run(run(args.base_url, args.secret, not args.quick,
                        args.allowed_origin, args.disallowed_origin))
    except Exception:  # noqa: BLE001 - report it as a failure with the summary
        crashed = traceback.format_exc()
        C.failed.append(f"[{C.section}] the scenario stopped: {crashed.strip().splitlines()[-1]}")
        print(crashed, flush=True)
    print()
    print(f"== summary: {len(C.passed)} passed, {len(C.failed)} failed "
          f"({time.monotonic() - started:.1f} s)")
    for n in C.notes:
        print(f"  note: {n}")
    for f in C.failed:
        print(f"  FAILED: {f}")
    return 1 if C.failed else 0


if __name__ == "__main__":
    sys.exit(main())
