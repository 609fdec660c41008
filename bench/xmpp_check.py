#!/usr/bin/env python3
"""Log in to an XMPP server over STARTTLS with SASL SCRAM-SHA-1 (Python 3
standard library only) and report what the server offered.

Used by run.sh as a pre-flight check of every server before any load, and
usable on its own:

    python3 bench/xmpp_check.py --server 127.0.0.1:5222 --domain localhost \
        --user bench0 --password bench --ca bench/run/tls/cert.pem

It checks, in order: STARTTLS is offered and required-capable, the TLS
certificate verifies against --ca for the name --domain, SCRAM-SHA-1 is
offered and succeeds (including the server signature), resource binding
works, a message sent to the own full JID comes back, and it prints the
SASL mechanisms and whether stream management (XEP-0198) was offered after
authentication.  Exit status 0 means every step passed.  With --json the
last line printed is one JSON object (used by run.sh for RESULTS.md notes).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import sys
import time


class Fail(Exception):
    pass


class Conn:
    def __init__(self, sock, timeout):
        self.sock = sock
        self.buf = b""
        self.timeout = timeout

    def send(self, text):
        self.sock.sendall(text.encode())

    def wait_for(self, pattern, what):
        """Read until `pattern` (a bytes regex) matches the buffer; return
        the match and drop everything up to its end from the buffer."""
        rx = re.compile(pattern, re.S)
        deadline = time.monotonic() + self.timeout
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            if re.search(rb"</stream:stream>|<stream:error", self.buf):
                raise Fail(f"stream closed/error while waiting for {what}: {self.buf[-400:]!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fail(f"timeout waiting for {what}; got {self.buf[-400:]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise Fail(f"connection closed while waiting for {what}; got {self.buf[-400:]!r}")
            self.buf += data


def open_stream(c, domain):
    c.send(
        "<?xml version='1.0'?><stream:stream to='%s' version='1.0' xml:lang='en' "
        "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>" % domain
    )
    m = c.wait_for(rb"<stream:features(?:\s[^>]*)?(?:/>|>(.*?)</stream:features>)", "stream features")
    return (m.group(1) or b"").decode(errors="replace")


def hi(password, salt, iterations):
    return hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)


def scram_sha1(c, user, password):
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={nonce}"
    c.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>%s</auth>"
        % base64.b64encode(("n,," + first_bare).encode()).decode()
    )
    m = c.wait_for(rb"<(challenge|failure)[^>]*>(.*?)</\1>", "SCRAM challenge")
    if m.group(1) == b"failure":
        raise Fail("SASL failure on first message: %r" % m.group(2))
    server_first = base64.b64decode(m.group(2)).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise Fail("server nonce does not extend ours")
    salt = base64.b64decode(attrs["s"])
    iterations = int(attrs["i"])
    salted = hi(password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha1).digest()
    stored_key = hashlib.sha1(client_key).digest()
    without_proof = "c=biws,r=" + attrs["r"]
    auth_message = ",".join([first_bare, server_first, without_proof]).encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha1).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    final = without_proof + ",p=" + base64.b64encode(proof).decode()
    c.send(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</response>"
        % base64.b64encode(final.encode()).decode()
    )
    m = c.wait_for(rb"<(success|failure|challenge)[^>]*?(?:/>|>(.*?)</\1>)", "SASL outcome")
    if m.group(1) == b"failure":
        raise Fail("SASL failure: %r" % m.group(0))
    payload = m.group(2) or b""
    if m.group(1) == b"challenge":
        # Some servers send the server-final-message as a challenge and
        # expect an empty response before <success/>.
        c.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        c.wait_for(rb"<success[^>]*?(?:/>|>.*?</success>)", "SASL success")
    server_key = hmac.new(salted, b"Server Key", hashlib.sha1).digest()
    expected = hmac.new(server_key, auth_message, hashlib.sha1).digest()
    if payload and payload != b"=":
        final_attrs = dict(
            kv.split("=", 1) for kv in base64.b64decode(payload).decode().split(",")
        )
        if base64.b64decode(final_attrs.get("v", "")) != expected:
            raise Fail("server signature mismatch")
        return True, iterations
    return False, iterations


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="HOST:PORT of the STARTTLS listener")
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--user", default="bench0")
    ap.add_argument("--password", default="bench")
    ap.add_argument("--ca", help="PEM to verify the certificate with (default: no verification)")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    a = ap.parse_args()

    host, port = a.server.rsplit(":", 1)
    info = {"label": a.label, "server": a.server, "ok": False}
    t0 = time.monotonic()
    try:
        raw = socket.create_connection((host, int(port)), timeout=a.timeout)
        c = Conn(raw, a.timeout)
        feats = open_stream(c, a.domain)
        if "urn:ietf:params:xml:ns:xmpp-tls" not in feats:
            raise Fail("STARTTLS not offered: %s" % feats)
        info["starttls_required_flag"] = bool(re.search(r"<starttls[^>]*>\s*<required", feats))
        info["plain_mechanisms"] = re.findall(r"<mechanism>([^<]+)</mechanism>", feats)
        c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        c.wait_for(rb"<proceed[^>]*/>", "STARTTLS proceed")
        if a.ca:
            ctx = ssl.create_default_context(cafile=a.ca)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        tls = ctx.wrap_socket(raw, server_hostname=a.domain)
        info["tls_version"] = tls.version()
        info["tls_cipher"] = tls.cipher()[0]
        c = Conn(tls, a.timeout)
        feats = open_stream(c, a.domain)
        mechs = re.findall(r"<mechanism>([^<]+)</mechanism>", feats)
        info["mechanisms"] = mechs
        if "SCRAM-SHA-1" not in mechs:
            raise Fail("SCRAM-SHA-1 not offered; mechanisms: %s" % mechs)
        verified, iterations = scram_sha1(c, a.user, a.password)
        info["scram_server_signature_verified"] = verified
        info["scram_iterations"] = iterations
        feats = open_stream(c, a.domain)
        info["sm_offered"] = "urn:xmpp:sm:3" in feats
        info["csi_offered"] = "urn:xmpp:csi:0" in feats
        c.send(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            "<resource>check</resource></bind></iq>"
        )
        m = c.wait_for(rb"<jid>([^<]+)</jid>", "bound JID")
        jid = m.group(1).decode()
        info["jid"] = jid
        # Legacy session establishment: harmless where optional, needed by
        # some servers before presence/messages are routed.
        if "urn:ietf:params:xml:ns:xmpp-session" in feats and "<optional" not in feats.split("xmpp-session", 1)[1][:80]:
            c.send("<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
            c.wait_for(rb"<iq[^>]*id=['\"]sess1['\"]", "session result")
        c.send(
            "<message to='%s' type='chat' id='echo1'><body>bench check</body></message>" % jid
        )
        c.wait_for(rb"<message[^>]*>.*?bench check.*?</message>", "echoed message")
        info["echo_ok"] = True
        c.send("</stream:stream>")
        try:
            tls.close()
        except OSError:
            pass
        info["ok"] = True
    except (Fail, OSError, ssl.SSLError, KeyError, ValueError) as e:
        info["error"] = "%s: %s" % (type(e).__name__, e)
    info["elapsed_ms"] = round((time.monotonic() - t0) * 1000, 1)
    if info["ok"]:
        print(
            "OK %s %s: STARTTLS (%s, %s), SCRAM-SHA-1 login as %s (i=%s, server signature %s), "
            "bind + self-message ok; mechanisms=%s; SM offered=%s; %.0f ms"
            % (
                a.label, a.server, info["tls_version"], info["tls_cipher"], info["jid"],
                info["scram_iterations"],
                "verified" if info["scram_server_signature_verified"] else "not sent",
                ",".join(info["mechanisms"]), info["sm_offered"], info["elapsed_ms"],
            )
        )
    else:
        print("FAIL %s %s: %s" % (a.label, a.server, info.get("error")))
    if a.json:
        print(json.dumps(info))
    return 0 if info["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
