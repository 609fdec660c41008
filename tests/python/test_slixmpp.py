"""Integration tests: slixmpp (a third-party XMPP client library) against the
real `tributary` binary.

Every client verifies the server certificate for the name 'localhost'
against the server's generated self-signed certificate (ca_certs), so TLS
verification is real. Each test runs under an overall asyncio timeout so a
hang fails instead of blocking CI; slixmpp's DEBUG log (every stanza sent
and received) and the server's log tail are shown for a failing test.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import slixmpp
from slixmpp.exceptions import IqError
from slixmpp.plugins import xep_0082

TEST_TIMEOUT = 20.0  # whole test, seconds
STEP_TIMEOUT = 5.0  # one expected reply or event, seconds

PLUGINS = (
    "xep_0030",  # service discovery
    "xep_0004",  # data forms
    "xep_0050",  # ad-hoc commands
    "xep_0133",  # service administration
    "xep_0092",  # software version
    "xep_0199",  # ping
    "xep_0202",  # entity time
    "xep_0203",  # delayed delivery
    "xep_0280",  # message carbons
)


class LoginFailed(AssertionError):
    pass


class Client(slixmpp.ClientXMPP):
    """A slixmpp client wired to one test server."""

    def __init__(self, server, user: str, password: str | None = None, *,
                 mech: str | None = None, direct_tls: bool = False,
                 resource: str | None = None):
        jid = server.jid(user) + (f"/{resource}" if resource else "")
        if password is None:
            password = server.passwords[user]
        super().__init__(jid, password, sasl_mech=mech)
        self.srv = server
        self.forced_mech = mech
        self.direct_tls = direct_tls
        # Real verification: CERT_REQUIRED + check_hostname (slixmpp's
        # default context) against the generated cert, name 'localhost'.
        self.ca_certs = Path(server.cert_path)
        self.enable_plaintext = False
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.xmpp_port = server.c2s_tls_port if direct_tls else server.c2s_port
        self.whitespace_keepalive = False
        for plugin in PLUGINS:
            self.register_plugin(plugin)
        self.auth_failures: list[Any] = []
        self.add_event_handler("failed_auth", self.auth_failures.append)
        self.tls_ok = False
        self.add_event_handler("tls_success", lambda _: setattr(self, "tls_ok", True))

    async def login(self, *, roster: bool = True, presence: bool = True,
                    timeout: float = 10.0) -> None:
        """Connects and waits for session_start; raises LoginFailed otherwise."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def ok(_=None):
            if not done.done():
                done.set_result(None)

        def fail(what: str):
            def handler(data=None):
                if not done.done():
                    done.set_exception(LoginFailed(f"{self.requested_jid}: {what}: {data!r}"))
            return handler

        handlers = [
            ("session_start", ok),
            ("failed_all_auth", fail("authentication failed")),
            ("no_auth", fail("no acceptable SASL mechanism offered")),
            ("connection_failed", fail("connection failed")),
            ("ssl_invalid_chain", fail("TLS certificate not trusted")),
            ("stream_error", fail("stream error")),
            ("disconnected", fail("disconnected before session start")),
        ]
        for name, handler in handlers:
            self.add_event_handler(name, handler)
        try:
            self.connect(self.srv.host, self.xmpp_port)
            try:
                await asyncio.wait_for(done, timeout)
            except asyncio.TimeoutError:
                raise LoginFailed(f"{self.requested_jid}: no session within {timeout}s") from None
            except LoginFailed as e:
                offered = sorted(self.plugin["feature_mechanisms"].mech_list)
                raise LoginFailed(f"{e} (SASL mechanisms offered: {offered}, "
                                  f"failures: {[str(f) for f in self.auth_failures]})") from None
        finally:
            for name, handler in handlers:
                self.del_event_handler(name, handler)
        if roster:
            await self.get_roster(timeout=STEP_TIMEOUT)
        if presence:
            self.send_presence()

    @property
    def used_mech(self) -> str | None:
        mech = self.plugin["feature_mechanisms"].mech
        return mech.name if mech is not None else None

    async def close(self) -> None:
        self.cancel_connection_attempt()
        if self.transport is not None:
            try:
                await asyncio.wait_for(self.disconnect(wait=1.0), 3.0)
            except (asyncio.TimeoutError, Exception):
                pass
        if self.transport is not None:
            self.abort()


def expect(client: Client, event: str,
           predicate: Callable[[Any], bool] = lambda _: True) -> asyncio.Future:
    """A future for the next `event` on `client` matching `predicate`.

    Register before doing what should cause the event."""
    fut = asyncio.get_running_loop().create_future()

    def handler(data=None):
        if not fut.done() and predicate(data):
            fut.set_result(data)

    client.add_event_handler(event, handler)
    fut.add_done_callback(lambda _: client.del_event_handler(event, handler))
    return fut


async def wait(fut: Awaitable, what: str, timeout: float = STEP_TIMEOUT):
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def eventually(check: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        await asyncio.sleep(0.05)


async def fetch_roster(c: Client) -> dict:
    """The whole roster as the server stores it (a get without 'ver')."""
    iq = c.make_iq_get(queryxmlns="jabber:iq:roster")
    resp = await iq.send(timeout=STEP_TIMEOUT)
    assert resp["type"] == "result", str(resp)
    return {str(jid): dict(item) for jid, item in resp["roster"]["items"].items()}


class Session:
    """Creates clients inside the test's event loop and closes them all."""

    def __init__(self, server):
        self.srv = server
        self.clients: list[Client] = []

    def client(self, user: str, password: str | None = None, **kwargs) -> Client:
        c = Client(self.srv, user, password, **kwargs)
        self.clients.append(c)
        return c

    async def login(self, user: str, **kwargs) -> Client:
        login_kwargs = {k: kwargs.pop(k) for k in ("roster", "presence") if k in kwargs}
        c = self.client(user, **kwargs)
        await c.login(**login_kwargs)
        return c

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


def run(server, body: Callable[[Session], Awaitable[None]], timeout: float = TEST_TIMEOUT) -> None:
    async def main():
        session = Session(server)
        try:
            await asyncio.wait_for(body(session), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"test did not finish within {timeout}s") from None
        finally:
            await session.close()

    asyncio.run(main())


# --------------------------------------------------------------- logins

MECHS = ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]


def _check_login(server, mech: str, direct_tls: bool) -> None:
    async def body(s: Session):
        c = await s.login("alice", mech=mech, direct_tls=direct_tls)
        assert c.used_mech == mech
        assert c.authenticated
        assert c.boundjid.bare == "alice@localhost"
        assert c.boundjid.resource, "no resource bound"
        ssl_object = c.transport.get_extra_info("ssl_object")
        assert ssl_object is not None, "session is not encrypted"
        if direct_tls:
            assert "starttls" not in c.features
        else:
            assert "starttls" in c.features and c.tls_ok
        # The verified peer certificate names localhost.
        cert = ssl_object.getpeercert()
        assert ("DNS", "localhost") in cert.get("subjectAltName", ()), cert
        # The bound session works: the server answers a ping.
        iq = await c.plugin["xep_0199"].send_ping(server.domain, timeout=STEP_TIMEOUT)
        assert iq["type"] == "result"

    run(server, body)


@pytest.mark.parametrize("mech", MECHS)
def test_login_starttls(server, mech):
    _check_login(server, mech, direct_tls=False)


@pytest.mark.parametrize("mech", MECHS)
def test_login_direct_tls(server, mech):
    _check_login(server, mech, direct_tls=True)


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct_tls"])
def test_login_default_mechanism_choice(server, direct_tls):
    """slixmpp picks a mechanism by itself from what the server offers."""

    async def body(s: Session):
        c = await s.login("bob", direct_tls=direct_tls)
        assert c.used_mech in {"SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1",
                               "SCRAM-SHA-1-PLUS", "SCRAM-SHA-512", "SCRAM-SHA-512-PLUS",
                               "PLAIN"}, c.used_mech
        assert c.boundjid.bare == "bob@localhost"

    run(server, body)


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct_tls"])
def test_login_over_tls12(server, direct_tls):
    """A TLS 1.2 client (no tls-exporter) still logs in with its own choice.

    SCRAM-*-PLUS offered on such a session would have to work with
    tls-unique, which slixmpp then uses."""

    async def body(s: Session):
        c = s.client("alice", direct_tls=direct_tls)
        c.ssl_context.maximum_version = ssl.TLSVersion.TLSv1_2
        await c.login()
        ssl_object = c.transport.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.2"
        assert c.boundjid.bare == "alice@localhost"

    run(server, body)


@pytest.mark.parametrize("mech", MECHS)
def test_wrong_password_fails(server, mech):
    async def body(s: Session):
        c = s.client("alice", "not-the-password", mech=mech)
        failed = expect(c, "failed_auth")
        all_failed = expect(c, "failed_all_auth")
        started = expect(c, "session_start")
        c.connect(server.host, c.xmpp_port)
        failure = await wait(failed, "SASL <failure/> for a wrong password")
        assert failure["condition"] == "not-authorized", str(failure)
        await wait(all_failed, "slixmpp to give up after the failure")
        assert not started.done(), "session started with a wrong password"
        assert not c.authenticated

    run(server, body)


def test_unknown_user_fails(server):
    async def body(s: Session):
        c = Client(server, "nobody", "whatever", mech="SCRAM-SHA-256")
        s.clients.append(c)
        failed = expect(c, "failed_auth")
        c.connect(server.host, c.xmpp_port)
        failure = await wait(failed, "SASL <failure/> for an unknown account")
        assert failure["condition"] == "not-authorized", str(failure)

    run(server, body)


def test_plain_not_offered_before_tls(server):
    """Before STARTTLS the features require TLS and never offer PLAIN."""
    with socket.create_connection((server.host, server.c2s_port), timeout=STEP_TIMEOUT) as sock:
        sock.sendall(
            b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
            b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        data = b""
        while b"</stream:features>" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    text = data.decode("utf-8", "replace")
    assert "</stream:features>" in text, f"no complete <stream:features/>: {text!r}"
    assert "urn:ietf:params:xml:ns:xmpp-tls" in text, f"STARTTLS not offered: {text!r}"
    assert "<mechanism>PLAIN</mechanism>" not in text, f"PLAIN offered in the clear: {text!r}"


def test_certificate_is_verifiable_for_localhost_only(server):
    ctx = ssl.create_default_context(cafile=str(server.cert_path))
    with socket.create_connection((server.host, server.c2s_tls_port), timeout=STEP_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.getpeercert() is not None
    with socket.create_connection((server.host, server.c2s_tls_port), timeout=STEP_TIMEOUT) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="not-localhost.example")


def test_untrusted_certificate_is_rejected_by_client(server):
    """Without ca_certs the self-signed cert is not trusted: verification is real."""

    async def body(s: Session):
        c = s.client("alice", mech="SCRAM-SHA-256", direct_tls=True)
        c.ca_certs = None
        failed = expect(c, "connection_failed")
        started = expect(c, "session_start")
        c.connect(server.host, c.xmpp_port)
        err = await wait(failed, "the TLS handshake to fail verification")
        assert isinstance(err, ssl.SSLCertVerificationError), repr(err)
        assert not started.done()

    run(server, body)


# --------------------------------------------------------------- messaging

def test_chat_message_between_users(server):
    async def body(s: Session):
        bob = await s.login("bob")
        alice = await s.login("alice")
        got = expect(bob, "message", lambda m: m["body"] == "hello bob")
        alice.send_message(mto="bob@localhost", mbody="hello bob", mtype="chat")
        msg = await wait(got, "bob to receive alice's message")
        assert msg["type"] == "chat"
        assert msg["from"] == alice.boundjid, (str(msg["from"]), str(alice.boundjid))
        assert msg["to"].bare == "bob@localhost"

        # And the other way, to alice's full JID.
        got = expect(alice, "message", lambda m: m["body"] == "hi alice")
        bob.send_message(mto=alice.boundjid, mbody="hi alice", mtype="chat")
        msg = await wait(got, "alice to receive bob's reply")
        assert msg["from"] == bob.boundjid

    run(server, body)


def test_subscription_and_presence(server):
    async def body(s: Session):
        bob = s.client("bob")
        bob.auto_authorize = None  # handle the request by hand
        bob.auto_subscribe = False
        requests = []

        def on_subscribe(presence):
            requests.append(presence)
            bob.send_presence(pto=presence["from"].bare, ptype="subscribed")

        bob.add_event_handler("presence_subscribe", on_subscribe)
        await bob.login()

        alice = s.client("alice")
        alice.auto_authorize = None
        alice.auto_subscribe = False
        await alice.login()

        approved = expect(alice, "presence_subscribed",
                          lambda p: p["from"].bare == "bob@localhost")
        bob_online = expect(alice, "presence_available",
                            lambda p: p["from"].bare == "bob@localhost")
        alice.send_presence(pto="bob@localhost", ptype="subscribe")

        await wait(approved, "alice to receive bob's <presence type='subscribed'/>")
        assert len(requests) == 1
        assert requests[0]["from"].bare == "alice@localhost"
        p = await wait(bob_online, "bob's available presence at alice after approval")
        assert p["from"] == bob.boundjid, str(p["from"])

        await eventually(
            lambda: alice.client_roster["bob@localhost"]["subscription"] == "to",
            "alice's roster shows subscription 'to' for bob (got "
            f"{alice.client_roster['bob@localhost']['subscription']!r})",
        )

        # Bob's later presence changes reach alice; alice's do not reach bob.
        # (slixmpp names the event after the show value: presence_away.)
        away = expect(alice, "presence_away",
                      lambda p: p["from"].bare == "bob@localhost" and p["show"] == "away")
        bob.send_presence(pshow="away", pstatus="lunch")
        p = await wait(away, "bob's updated presence (show=away) at alice")
        assert p["status"] == "lunch"

        # A fresh fetch of the roster from the server agrees.
        items = await fetch_roster(alice)
        assert "bob@localhost" in items, items
        assert items["bob@localhost"]["subscription"] == "to", items

        # RFC 6121 3.1.5: the approval is pushed to bob's roster with
        # subscription='from' (the item is created if bob had none).
        try:
            await eventually(
                lambda: bob.client_roster["alice@localhost"]["subscription"] == "from",
                "a roster push to bob", timeout=2.0)
            pushed = "yes"
        except AssertionError:
            pushed = "no"
        items = await fetch_roster(bob)
        assert pushed == "yes" and items.get("alice@localhost", {}).get("subscription") == "from", (
            "after bob approved alice, RFC 6121 3.1.5 wants a roster push to bob with "
            f"subscription='from' for alice; push received: {pushed}; "
            f"bob's roster as stored: {items}")

        # Bob goes offline: alice gets unavailable presence.
        gone = expect(alice, "presence_unavailable",
                      lambda p: p["from"].bare == "bob@localhost")
        await bob.close()
        await wait(gone, "bob's unavailable presence at alice after he disconnects")

    run(server, body)


def test_offline_message_delivered_at_login(server):
    async def body(s: Session):
        alice = await s.login("alice")
        alice.send_message(mto="bob@localhost", mbody="while you were away", mtype="chat")
        # Make sure the server has processed the message before bob logs in.
        iq = await alice.plugin["xep_0199"].send_ping(server.domain, timeout=STEP_TIMEOUT)
        assert iq["type"] == "result"

        bob = s.client("bob")
        got = expect(bob, "message", lambda m: m["body"] == "while you were away")
        await bob.login()
        msg = await wait(got, "the offline message to be delivered to bob")
        assert msg["from"].bare == "alice@localhost"
        assert msg["type"] == "chat"

    run(server, body)


def test_offline_message_has_delay_stamp(server):
    """XEP-0160 / XEP-0203: stored messages carry <delay/> with the server as from."""

    async def body(s: Session):
        alice = await s.login("alice")
        alice.send_message(mto="bob@localhost", mbody="stamped", mtype="chat")
        await alice.plugin["xep_0199"].send_ping(server.domain, timeout=STEP_TIMEOUT)

        bob = s.client("bob")
        got = expect(bob, "message", lambda m: m["body"] == "stamped")
        await bob.login()
        msg = await wait(got, "the offline message to be delivered to bob")
        delay = msg.xml.find("{urn:xmpp:delay}delay")
        assert delay is not None, str(msg)
        assert delay.get("from") == "localhost", str(msg)
        stamp = delay.get("stamp")
        assert stamp, str(msg)
        # XEP-0082 DateTime; clients (slixmpp here, via datetime.strptime
        # %f) parse at most microseconds.
        try:
            parsed = msg["delay"]["stamp"]
        except ValueError as e:
            raise AssertionError(f"slixmpp cannot parse the delay stamp {stamp!r}: {e}") from None
        now = datetime.datetime.now(datetime.timezone.utc)
        assert abs((now - parsed).total_seconds()) < 60, (stamp, now)

    run(server, body)


def test_message_carbons(server):
    async def body(s: Session):
        bob = await s.login("bob")
        one = await s.login("alice", resource="one")
        two = await s.login("alice", resource="two")
        for c in (one, two):
            iq = await c.plugin["xep_0280"].enable(timeout=STEP_TIMEOUT)
            assert iq["type"] == "result", str(iq)

        sent = expect(two, "carbon_sent")
        at_bob = expect(bob, "message", lambda m: m["body"] == "from one")
        one.send_message(mto=bob.boundjid, mbody="from one", mtype="chat")
        await wait(at_bob, "bob to receive the message from alice/one")
        carbon = await wait(sent, "a sent carbon at alice/two")
        assert carbon["from"] == slixmpp.JID("alice@localhost"), str(carbon)
        inner = carbon["carbon_sent"]
        assert inner["body"] == "from one", str(carbon)
        assert inner["from"] == one.boundjid, str(carbon)
        assert inner["to"] == bob.boundjid, str(carbon)

        received = expect(two, "carbon_received")
        at_one = expect(one, "message", lambda m: m["body"] == "to one")
        bob.send_message(mto=one.boundjid, mbody="to one", mtype="chat")
        await wait(at_one, "alice/one to receive bob's message")
        carbon = await wait(received, "a received carbon at alice/two")
        assert carbon["from"] == slixmpp.JID("alice@localhost"), str(carbon)
        inner = carbon["carbon_received"]
        assert inner["body"] == "to one", str(carbon)
        assert inner["from"] == bob.boundjid, str(carbon)

    run(server, body)


# --------------------------------------------------------------- server queries

def test_ping_server(server):
    async def body(s: Session):
        c = await s.login("alice", roster=False, presence=False)
        iq = await c.plugin["xep_0199"].send_ping(server.domain, timeout=STEP_TIMEOUT)
        assert iq["type"] == "result"
        assert iq["from"] == slixmpp.JID("localhost")

    run(server, body)


def test_version_query(server):
    async def body(s: Session):
        c = await s.login("alice", roster=False, presence=False)
        iq = await c.plugin["xep_0092"].get_version(server.domain, timeout=STEP_TIMEOUT)
        assert iq["type"] == "result"
        assert iq["software_version"]["name"] == "Tributary", str(iq)
        assert iq["software_version"]["version"], str(iq)

    run(server, body)


def test_entity_time(server):
    async def body(s: Session):
        c = await s.login("alice", roster=False, presence=False)
        iq = await c.plugin["xep_0202"].get_entity_time(slixmpp.JID(server.domain),
                                                       timeout=STEP_TIMEOUT)
        assert iq["type"] == "result", str(iq)
        # slixmpp's entity_time['utc'] appends a second 'Z' to the (correct,
        # XEP-0202 example-style) '...Z' text, so read the element itself.
        utc_el = iq.xml.find("{urn:xmpp:time}time/{urn:xmpp:time}utc")
        assert utc_el is not None and utc_el.text, str(iq)
        utc = xep_0082.parse(utc_el.text)
        now = datetime.datetime.now(datetime.timezone.utc)
        assert abs((now - utc).total_seconds()) < 60, (str(iq), now)
        assert iq.xml.find("{urn:xmpp:time}time/{urn:xmpp:time}tzo") is not None, str(iq)

    run(server, body)


def test_disco_info_lists_features(server):
    async def body(s: Session):
        c = await s.login("alice", roster=False, presence=False)
        iq = await c.plugin["xep_0030"].get_info(jid=server.domain, timeout=STEP_TIMEOUT)
        features = set(iq["disco_info"]["features"])
        for ns in ("http://jabber.org/protocol/disco#info", "urn:xmpp:ping",
                   "jabber:iq:version", "urn:xmpp:time", "urn:xmpp:carbons:2",
                   "http://jabber.org/protocol/commands"):
            assert ns in features, (ns, sorted(features))
        identities = {(i[0], i[1]) for i in iq["disco_info"]["identities"]}
        assert ("server", "im") in identities, identities

    run(server, body)


# --------------------------------------------------------------- administration

ADMIN_NODE = "http://jabber.org/protocol/admin#add-user"


def _add_user_form(c: Client, jid: str, password: str):
    form = c.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/admin")
    form.add_field(var="accountjid", ftype="jid-single", value=jid)
    form.add_field(var="password", ftype="text-private", value=password)
    form.add_field(var="password-verify", ftype="text-private", value=password)
    return form


async def _admin_add_user(admin: Client, jid: str, password: str):
    first = await admin.plugin["xep_0050"].send_command(
        server_jid(admin), ADMIN_NODE, action="execute", timeout=STEP_TIMEOUT)
    assert first["type"] == "result", str(first)
    assert first["command"]["status"] == "executing", str(first)
    sessionid = first["command"]["sessionid"]
    assert sessionid, str(first)
    fields = first["command"]["form"].get_fields(use_dict=True)
    for var in ("accountjid", "password"):
        assert var in fields, (var, str(first))
    return await admin.plugin["xep_0050"].send_command(
        server_jid(admin), ADMIN_NODE, action="complete", sessionid=sessionid,
        payload=_add_user_form(admin, jid, password), timeout=STEP_TIMEOUT)


def server_jid(c: Client) -> slixmpp.JID:
    return slixmpp.JID(c.boundjid.domain)


def test_admin_adds_user_then_user_logs_in(server):
    async def body(s: Session):
        admin = await s.login("admin", roster=False, presence=False)
        done = await _admin_add_user(admin, "carol@localhost", "carol-pw-42")
        assert done["type"] == "result", str(done)
        assert done["command"]["status"] == "completed", str(done)

        carol = await s.login("carol", password="carol-pw-42", mech="SCRAM-SHA-256")
        assert carol.boundjid.bare == "carol@localhost"
        carol2 = await s.login("carol", password="carol-pw-42", mech="PLAIN", direct_tls=True)
        assert carol2.boundjid.bare == "carol@localhost"

    run(server, body)
    listed = server.cli("user", "list")
    assert "carol@localhost" in listed.stdout.split(), listed


def test_admin_commands_listed_for_admin(server):
    async def body(s: Session):
        admin = await s.login("admin", roster=False, presence=False)
        iq = await admin.plugin["xep_0050"].get_commands(server_jid(admin), timeout=STEP_TIMEOUT)
        nodes = {item[1] for item in iq["disco_items"]["items"]}
        assert ADMIN_NODE in nodes, nodes

    run(server, body)


def test_non_admin_cannot_add_user(server):
    async def body(s: Session):
        alice = await s.login("alice", roster=False, presence=False)
        with pytest.raises(IqError) as err:
            await _admin_add_user(alice, "mallory@localhost", "mallory-pw")
        assert err.value.iq["error"]["condition"] == "forbidden", str(err.value.iq)

        # The account was not created.
        m = s.client("mallory", "mallory-pw", mech="SCRAM-SHA-256")
        failed = expect(m, "failed_auth")
        m.connect(server.host, m.xmpp_port)
        await wait(failed, "login of the never-created account to fail")

    run(server, body)
