"""XEP-0198 stream management against the real `tributary` binary, with
slixmpp's own XEP-0198 plugin (xep_0198) as the client and the links broken
by the fault-injection proxy in proxy.py.

Like test_slixmpp.py: real TLS verification, each test bounded by an
overall asyncio timeout, slixmpp's stanza log and the server's log tail
shown for a failing test.
"""

from __future__ import annotations

import asyncio
import logging
import re

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import FAST_DEAD_AFTER, FAST_IDLE_PING, FAST_RESUME_TIMEOUT
from proxy import Proxy
from test_slixmpp import STEP_TIMEOUT, Client, Session, eventually, expect, run, wait

SM = "urn:xmpp:sm:3"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

log = logging.getLogger("test_stream_management")


def sm_client(s: Session, user: str, *, port: int, resource: str) -> Client:
    """A slixmpp client with XEP-0198 (resumption requested, the plugin's
    default) connecting to 127.0.0.1:`port` (the proxy)."""
    c = s.client(user, resource=resource)
    c.register_plugin("xep_0198")
    c.xmpp_port = port
    return c


def sm(c: Client):
    return c.plugin["xep_0198"]


class Recorder:
    """Counts a client's events (registered before connecting)."""

    def __init__(self, c: Client, *names: str):
        self.events: dict[str, list] = {n: [] for n in names}
        for n in names:
            c.add_event_handler(n, self.events[n].append)

    def count(self, name: str) -> int:
        return len(self.events[name])


def collect_bodies(c: Client, prefix: str) -> list:
    """Every <message/> body starting with `prefix` that `c` receives, in
    arrival order, as (body, message)."""
    got: list = []

    def on_message(msg):
        if msg["body"].startswith(prefix):
            got.append((msg["body"], msg))

    c.add_event_handler("message", on_message)
    return got


async def server_roundtrip(c: Client) -> None:
    """A ping to the server: when it is answered, everything sent to `c`
    before the reply has reached it."""
    iq = await c.plugin["xep_0199"].send_ping(c.boundjid.domain, timeout=STEP_TIMEOUT)
    assert iq["type"] == "result", str(iq)


# --------------------------------------------------------------- enable

def test_sm_enabled_with_resumption(server):
    """slixmpp asks for resumable SM; the server answers <enabled
    resume='true' id=.../> and acknowledges what the client sends."""

    async def body(s: Session):
        c = s.client("alice", resource="phone")
        c.register_plugin("xep_0198")
        enabled = expect(c, "sm_enabled")
        failed = expect(c, "sm_failed")
        await c.login()
        stanza = await wait(enabled, "<enabled/> in answer to slixmpp's <enable resume='true'/>")
        assert not failed.done(), str(failed.result())
        assert stanza["resume"] is True, str(stanza)
        assert stanza["id"], f"no resumption id: {stanza}"
        assert sm(c).sm_id == stanza["id"]
        assert sm(c).enabled_in and sm(c).enabled_out
        assert "stream_management" in c.features
        # With SM on, an ordinary disconnection no longer ends the session
        # for slixmpp (it keeps its state to resume).
        assert c.end_session_on_disconnect is False

        # The server acknowledges handled stanzas: after a request, every
        # stanza slixmpp sent so far (roster get, presence, ping, message)
        # is acked and slixmpp's unacked queue drains.
        await server_roundtrip(c)
        c.send_message(mto="bob@localhost", mbody="counted", mtype="chat")
        # roster get, presence, ping, message (counted when slixmpp's send
        # loop writes them)
        sent = 4
        await eventually(lambda: sm(c).seq == sent, f"slixmpp to count {sent} sent stanzas "
                         f"(seq={sm(c).seq})")
        acked = expect(c, "stanza_acked",
                       lambda st: isinstance(st, slixmpp.Message) and st["body"] == "counted")
        sm(c).request_ack()
        await wait(acked, "the server's <a/> covering the message")
        await eventually(lambda: sm(c).last_ack == sent and not sm(c).unacked_queue,
                         f"the server acks all {sent} stanzas (last h="
                         f"{sm(c).last_ack}, unacked {len(sm(c).unacked_queue)})")

        # The other direction: the server asks slixmpp for an ack after
        # ack_request_every (default 5) stanzas, well before its
        # ack_request_delay_ms (5 s) would.
        requests = []
        c.register_handler(Callback("test: server <r/>", MatchXPath(f"{{{SM}}}r"),
                                    requests.append, instream=True))
        await server_roundtrip(c)
        requests.clear()
        handled = sm(c).handled
        for _ in range(5):
            await server_roundtrip(c)
        await eventually(lambda: requests, "the server's <r/> after 5 stanzas", timeout=2.0)
        assert sm(c).handled == handled + 5, (sm(c).handled, handled)

    run(server, body)


# --------------------------------------------------------------- cut and resume

N_MESSAGES = 200
CUT_AT = (40, 100, 160)  # the link breaks while messages #i.. are in flight
IN_FLIGHT = 5  # messages alice's client writes into the dead link before it is cut
BODY = re.compile(r"<body>(m-\d+)</body>")


def test_cut_links_resumed_each_message_once_in_order(server):
    """alice (SM) sends 200 messages to bob through a proxy; three times her
    link dies with messages in flight (the proxy swallows what she writes and
    the server's acks, then cuts the connection). Her client reconnects from
    its 'disconnected' handler and resumes the session each time; bob gets
    every body exactly once, in order.

    alice's app holds new messages while her link is down (from
    'disconnected' to 'session_resumed'): slixmpp 1.17 itself sends
    messages queued during an outage before it retransmits the
    unacknowledged ones (see test_cut_links_while_app_keeps_sending)."""
    _cut_and_resume(server, hold_while_down=True)


def test_cut_links_while_app_keeps_sending(server):
    """Same, but alice's app keeps calling send_message() while her link
    is down. slixmpp 1.17 queues those and, on <resumed/>, writes them
    before its retransmission of the unacknowledged ones (xmlstream.send
    puts both in one list flushed on 'session_resumed', the outage ones
    first), so bob cannot get them in send order. What the server owes is
    checked: every message exactly once, in the order alice's client
    actually put them on the stream (the last time it wrote each).

    Before each break the client is let catch up with acks: after such a
    resumption slixmpp's unacked queue no longer matches what it wrote and
    it discards acked stanzas from it by count, so a second break before
    that resends the wrong messages (seen under load: 5 lost, 5 doubled)."""
    _cut_and_resume(server, hold_while_down=False)


def _cut_and_resume(server, *, hold_while_down: bool) -> None:
    async def body(s: Session):
        proxy = await Proxy.start((server.host, server.c2s_port))
        try:
            await scenario(s, proxy)
        finally:
            for c in s.clients:
                c.keep_reconnecting = False
            await proxy.close()

    async def scenario(s: Session, proxy: Proxy):
        bob = await s.login("bob", resource="desk")
        got = collect_bodies(bob, "m-")

        alice = sm_client(s, "alice", port=proxy.port, resource="phone")
        ev = Recorder(alice, "sm_enabled", "session_resumed", "sm_failed",
                      "session_start", "session_end", "disconnected")
        alice.keep_reconnecting = True
        link_up = asyncio.Event()

        def on_disconnected(_):
            link_up.clear()
            # The documented slixmpp way: connect again from 'disconnected';
            # the XEP-0198 plugin then resumes the stream.
            if alice.keep_reconnecting:
                log.info("alice disconnected; reconnecting through the proxy")
                alice.connect(server.host, proxy.port)

        alice.add_event_handler("session_resumed", lambda _: link_up.set())

        # Every message body alice's client writes to a connected stream,
        # in order (a message lost with a link and sent again after
        # resumption appears twice).
        wire: list[str] = []
        send_raw = alice.send_raw

        def tapped_send_raw(data):
            if alice.transport is not None:
                wire.extend(BODY.findall(data if isinstance(data, str) else data.decode()))
            return send_raw(data)

        alice.send_raw = tapped_send_raw

        await alice.login()
        link_up.set()
        alice.add_event_handler("disconnected", on_disconnected)
        assert ev.count("sm_enabled") == 1, ev.events
        sm_id = sm(alice).sm_id
        assert sm_id

        next_i = 0

        def send_next():
            nonlocal next_i
            alice.send_message(mto=bob.boundjid, mbody=f"m-{next_i}", mtype="chat")
            next_i += 1

        cuts = 0
        while next_i < N_MESSAGES:
            if next_i in CUT_AT:
                # Break only a link that is up (the previous resumption
                # done), so each break is one disconnection and one
                # resumption.
                await eventually(lambda: ev.count("session_resumed") == cuts,
                                 f"alice's stream resumed after cut #{cuts} "
                                 f"(resumed {ev.count('session_resumed')} times)")
                if not hold_while_down:
                    # After a resumption with messages queued during the
                    # outage, slixmpp's unacked queue is in a different
                    # order than what it wrote, and it drops acked stanzas
                    # from it by count: if the link broke again before
                    # everything is acked, it would resend the wrong ones.
                    # Let it catch up first.
                    sm(alice).request_ack()
                    await eventually(lambda: not sm(alice).unacked_queue,
                                     "alice's unacked queue to drain before the next break")
                # The link dies: what alice writes now (and the server's
                # acks for what it got just before) is lost...
                assert proxy.blackhole() == 1, "alice's link was not through the proxy"
                in_flight = [f"m-{next_i + k}" for k in range(IN_FLIGHT)]
                for _ in in_flight:
                    send_next()
                await eventually(lambda: set(in_flight) <= set(wire),
                                 f"alice's client to write {in_flight}")
                # ...then the connection drops. (Wait until slixmpp has seen
                # it: a stanza still in its send queue at that moment is
                # dropped without a trace by slixmpp 1.17, as its XEP-0198
                # plugin stops tracking on 'disconnected'.)
                disconnected = expect(alice, "disconnected")
                proxy.cut()
                await wait(disconnected, "alice's client to notice the cut")
                cuts += 1
                log.info("cut #%d with %s in flight", cuts, in_flight)
                continue
            if hold_while_down and not link_up.is_set():
                await wait(link_up.wait(), f"alice's stream to be resumed after cut #{cuts}")
            send_next()
            if next_i % 10 == 0:
                await asyncio.sleep(0.01)

        await eventually(lambda: len(got) >= N_MESSAGES,
                         f"bob to receive {N_MESSAGES} messages (got {len(got)}; "
                         f"alice resumed {ev.count('session_resumed')} times, "
                         f"SM failed {ev.count('sm_failed')} times; never written "
                         f"by alice's client: {sorted(set(f'm-{i}' for i in range(N_MESSAGES)) - set(wire))})",
                         timeout=20.0)
        # Anything duplicated or late would arrive before these answers.
        await server_roundtrip(alice)
        await server_roundtrip(bob)
        await asyncio.sleep(0.5)

        bodies = [b for b, _ in got]
        expected = [f"m-{i}" for i in range(N_MESSAGES)]
        dups = sorted({b for b in bodies if bodies.count(b) > 1})
        missing = sorted(set(expected) - set(bodies))
        assert sorted(bodies) == sorted(expected), (
            f"bob got {len(bodies)} messages for {N_MESSAGES} sent; "
            f"duplicated: {dups[:20]}; missing: {missing[:20]}")
        # The order alice's client last wrote each message to a stream.
        last_write = {b: k for k, b in enumerate(wire)}
        wire_order = sorted(expected, key=lambda b: last_write.get(b, -1))
        if hold_while_down:
            assert wire_order == expected, "alice's client itself reordered its messages"
        first_diff = next((k for k, (x, y) in enumerate(zip(bodies, wire_order)) if x != y), None)
        assert bodies == wire_order, (
            f"bob's order differs from the order alice's client sent them at index "
            f"{first_diff}: got {bodies[first_diff:first_diff + 5]}, "
            f"sent {wire_order[first_diff:first_diff + 5]}")
        for _, msg in got:
            assert msg["from"] == alice.boundjid, str(msg["from"])

        # The in-flight messages were lost with each link and sent again
        # after resumption (and the server counted them only then).
        resent = sorted({b for b in wire if wire.count(b) > 1})
        assert len(resent) >= IN_FLIGHT * len(CUT_AT), resent
        assert ev.count("disconnected") == len(CUT_AT), ev.events["disconnected"]
        assert ev.count("session_resumed") == len(CUT_AT), ev.events
        assert ev.count("sm_failed") == 0, [str(f) for f in ev.events["sm_failed"]]
        # Resumed, never a new session: one enable, one session_start.
        assert ev.count("sm_enabled") == 1
        assert ev.count("session_start") == 1
        assert sm(alice).sm_id == sm_id
        assert proxy.connections == 1 + len(CUT_AT), proxy.connections
        # In the end the server has acknowledged everything alice sent.
        sm(alice).request_ack()
        await eventually(lambda: not sm(alice).unacked_queue,
                         f"alice's unacked queue to drain ({len(sm(alice).unacked_queue)} left)")

    run(server, body, timeout=45.0)


# --------------------------------------------------------------- blackhole

N_LOST = 5


def test_blackholed_client_messages_go_offline_exactly_once(fast_server):
    """bob's phone (SM) goes silent (blackholed link). Messages alice sends
    to its full JID meanwhile are, once the server has given up on it
    (idle_ping + dead_after + resume_timeout), delivered exactly once to
    bob's next session from offline storage. When the phone's client comes
    back, resumption is refused and it does not get them again."""
    server = fast_server

    async def body(s: Session):
        proxy = await Proxy.start((server.host, server.c2s_port))
        try:
            await _blackhole(s, proxy)
        finally:
            await proxy.close()

    async def _blackhole(s: Session, proxy: Proxy):
        phone = sm_client(s, "bob", port=proxy.port, resource="phone")
        ev = Recorder(phone, "sm_enabled", "session_resumed", "sm_failed",
                      "session_start", "disconnected")
        phone_got = collect_bodies(phone, "")
        # No reconnection from 'disconnected' here: the phone stays away.
        await phone.login()
        assert ev.count("sm_enabled") == 1, ev.events
        phone_jid = phone.boundjid
        alice = await s.login("alice")

        # The link works, and bob's client acknowledges what it got.
        alice.send_message(mto=phone_jid, mbody="seen-1", mtype="chat")
        await eventually(lambda: [b for b, _ in phone_got] == ["seen-1"],
                         f"the phone to receive seen-1 (got {[b for b, _ in phone_got]})")
        sm(phone).send_ack()
        await server_roundtrip(phone)  # the server has handled the <a/>

        # The phone goes into a tunnel: nothing gets through either way,
        # nobody sees the connection close.
        sent_by_phone = sm(phone).seq  # stanzas the server has handled
        assert proxy.blackhole() == 1
        t0 = asyncio.get_running_loop().time()
        lost = [f"lost-{i}" for i in range(1, N_LOST + 1)]
        for text in lost[:3]:
            alice.send_message(mto=phone_jid, mbody=text, mtype="chat")
        await server_roundtrip(alice)
        # After idle_ping + dead_after the server treats the phone as gone
        # and holds what comes for it until resume_timeout expires.
        await asyncio.sleep(FAST_IDLE_PING + FAST_DEAD_AFTER + 1.0)
        for text in lost[3:]:
            alice.send_message(mto=phone_jid, mbody=text, mtype="chat")
        await server_roundtrip(alice)
        expiry = FAST_IDLE_PING + FAST_DEAD_AFTER + FAST_RESUME_TIMEOUT + 2.5
        await asyncio.sleep(max(0.0, t0 + expiry - asyncio.get_running_loop().time()))
        assert ev.count("disconnected") == 0, "the phone's client noticed the blackhole"
        assert [b for b, _ in phone_got] == ["seen-1"], phone_got
        assert proxy.discarded["s2c"] > 0, "the server sent nothing into the blackhole"

        # bob's next session gets each of them once, from offline storage.
        desk = s.client("bob", resource="desk")
        desk_got = collect_bodies(desk, "")
        await desk.login()
        await eventually(lambda: len(desk_got) >= N_LOST,
                         f"bob's new session to receive the {N_LOST} messages "
                         f"(got {[b for b, _ in desk_got]})", timeout=STEP_TIMEOUT)
        await server_roundtrip(desk)
        await asyncio.sleep(0.5)
        bodies = [b for b, _ in desk_got]
        assert bodies == lost, f"bob's new session got {bodies}, expected each of {lost} once"
        for _, msg in desk_got:
            assert msg["from"].bare == "alice@localhost", str(msg)
            delay = msg.xml.find("{urn:xmpp:delay}delay")
            assert delay is not None and delay.get("from") == "localhost", (
                f"not from offline storage (no <delay from='localhost'/>): {msg}")

        # The phone comes out of the tunnel: its link drops, its client
        # reconnects and asks to resume. The session is gone: <failed/>,
        # then a fresh session that does not get the messages again.
        failed = expect(phone, "sm_failed")
        started = expect(phone, "session_start")
        phone.add_event_handler("session_start", lambda _: phone.send_presence())
        noticed = expect(phone, "disconnected")
        assert proxy.cut() == 1
        await wait(noticed, "the phone to notice the cut")
        phone.connect(server.host, proxy.port)
        f = await wait(failed, "<failed/> in answer to the phone's <resume/>")
        assert f.xml.find(f"{{{STANZAS}}}item-not-found") is not None, str(f)
        # The server still reports how many of the phone's stanzas it
        # handled (roster get, presence, ping) so nothing is resent twice.
        assert f.xml.get("h") == str(sent_by_phone), (str(f), sent_by_phone)
        await wait(started, "a new session for the phone after the failed resumption")
        assert ev.count("session_resumed") == 0
        await server_roundtrip(phone)
        await asyncio.sleep(0.5)
        assert [b for b, _ in phone_got] == ["seen-1"], (
            f"the phone got {[b for b, _ in phone_got]} after coming back")
        assert [b for b, _ in desk_got] == lost

    run(server, body, timeout=45.0)
