"""External components (XEP-0114) driven by slixmpp's ComponentXMPP, a
component library written by others: the way processors connect."""

import asyncio

import pytest
from slixmpp.componentxmpp import ComponentXMPP

from conftest import COMPONENT_DOMAIN, COMPONENT_SECRET
from test_slixmpp import Session, expect, run, wait, STEP_TIMEOUT


class Processor(ComponentXMPP):
    def __init__(self, server, secret: str = COMPONENT_SECRET):
        super().__init__(COMPONENT_DOMAIN, secret, server.host, server.component_port)
        self.register_plugin("xep_0030")

    async def start(self) -> None:
        started = expect(self, "session_start")
        failed = asyncio.get_running_loop().create_future()
        self.add_event_handler(
            "stream_error", lambda e: failed.done() or failed.set_result(e))
        self.add_event_handler(
            "disconnected", lambda _=None: failed.done() or failed.set_result("disconnected"))
        self.connect()
        done, _ = await asyncio.wait({started, failed}, timeout=STEP_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if started not in done:
            raise AssertionError(f"component did not connect: {failed.result() if failed in done else 'timeout'}")


def test_processor_receives_a_report_and_answers_the_collector(component_server):
    async def body(s: Session):
        processor = Processor(component_server)
        await processor.start()
        try:
            alice = await s.login("alice")
            got = expect(processor, "message", lambda m: m["body"] == "meter A-17: 1234.5")
            alice.send_message(mto=COMPONENT_DOMAIN, mbody="meter A-17: 1234.5", mtype="normal")
            report = await wait(got, "the processor to receive the report")
            assert report["from"] == alice.boundjid

            answer = expect(alice, "message", lambda m: m["body"] == "processed")
            processor.send_message(mto=report["from"], mfrom=COMPONENT_DOMAIN, mbody="processed")
            msg = await wait(answer, "alice to receive the processor's answer")
            assert str(msg["from"]) == COMPONENT_DOMAIN
        finally:
            processor.disconnect()

    run(component_server, body)


def test_connected_processor_is_listed_in_disco(component_server):
    async def body(s: Session):
        alice = await s.login("alice")
        items = await alice.plugin["xep_0030"].get_items(jid="localhost", timeout=STEP_TIMEOUT)
        assert COMPONENT_DOMAIN not in {str(i[0]) for i in items["disco_items"]["items"]}
        processor = Processor(component_server)
        await processor.start()
        try:
            items = await alice.plugin["xep_0030"].get_items(jid="localhost", timeout=STEP_TIMEOUT)
            assert COMPONENT_DOMAIN in {str(i[0]) for i in items["disco_items"]["items"]}
        finally:
            processor.disconnect()

    run(component_server, body)


def test_wrong_secret_is_refused(component_server):
    async def body(s: Session):
        processor = Processor(component_server, secret="guess")
        refused = expect(processor, "stream_error")
        with pytest.raises(AssertionError, match="did not connect"):
            await processor.start()
        error = await wait(refused, "the server's stream error")
        assert error["condition"] == "not-authorized", str(error)
        processor.disconnect()

    run(component_server, body)


def test_slixmpp_reports_are_processed_by_tributary_process(component_server, tmp_path):
    """A report sent by slixmpp (not our collector) is committed by the
    reference processor, and slixmpp gets the XEP-0184 receipt."""
    import sqlite3
    import subprocess

    from conftest import tributary_bin

    db = tmp_path / "reports.db"
    proc = subprocess.Popen(
        [str(tributary_bin()), "process",
         "--server", f"{component_server.host}:{component_server.component_port}",
         "--domain", COMPONENT_DOMAIN, "--secret", COMPONENT_SECRET,
         "--db", f"sqlite://{db}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        async def body(s: Session):
            alice = await s.login("alice")
            # slixmpp's own XEP-0184 plugin recognises the receipt.
            alice.register_plugin("xep_0184")
            got = expect(alice, "receipt_received")
            alice.send_raw(
                f"<message xmlns='jabber:client' to='{COMPONENT_DOMAIN}' id='R-py-1'>"
                "<report xmlns='urn:tributary:report:0' id='R-py-1' kind='meter.reading'>"
                "<json xmlns='urn:xmpp:json:0'>{\"kwh\": 12.5}</json></report>"
                "<request xmlns='urn:xmpp:receipts'/></message>")
            receipt = await wait(got, "the processed receipt", timeout=20)
            assert str(receipt["from"]) == COMPONENT_DOMAIN
            assert receipt["receipt"] == "R-py-1"

        run(component_server, body)
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT sender, id, kind, payload FROM reports").fetchall()
        assert rows == [("alice@localhost", "R-py-1", "meter.reading", '{"kwh": 12.5}')]
    finally:
        proc.kill()
        proc.wait(timeout=5)
