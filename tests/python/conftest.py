"""Fixtures that run the real `tributary` binary for slixmpp integration tests.

Each test gets its own server: fresh data directory, fresh self-signed
certificate, fresh ports, the accounts in USERS created with
`tributary user add`. The server's stderr goes to a file whose tail is
printed when a test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "localhost"
HOST = "127.0.0.1"

# Accounts created before the server starts. admin@localhost is listed in
# `admins` in the generated config.
USERS = {
    "alice": "alice-Secr3t,=pass",
    "bob": "bob-p\u00e4ssword",
    "admin": "admin-very-secret",
}

STARTUP_TIMEOUT = 20.0
LOG_TAIL_LINES = 80


def tributary_bin() -> Path:
    return Path(os.environ.get("TRIBUTARY_BIN", REPO / "target" / "debug" / "tributary"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Server:
    domain: str
    host: str
    c2s_port: int
    c2s_tls_port: int
    data_dir: Path
    config_path: Path
    log_path: Path
    # XEP-0114 listener; the server opens it only when a component is declared.
    component_port: int = 0
    passwords: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def cert_path(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Runs `tributary <args> --config <config>` and returns the result."""
        return subprocess.run(
            [str(tributary_bin()), *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def add_user(self, user: str, password: str) -> None:
        r = self.cli("user", "add", self.jid(user), "--password", password)
        if r.returncode != 0:
            raise RuntimeError(
                f"`tributary user add {self.jid(user)}` failed ({r.returncode}):\n"
                f"stdout: {r.stdout}\nstderr: {r.stderr}"
            )
        self.passwords[user] = password

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no server log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info,tributary=debug,tributary_server=debug,tributary_proto=debug")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(tributary_bin()), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        finally:
            log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"tributary serve exited with status {self.proc.returncode} during startup; "
                    f"log tail:\n{self.log_tail()}"
                )
            if (
                _port_open(self.c2s_port)
                and _port_open(self.c2s_tls_port)
                and self.cert_path.is_file()
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"tributary serve did not accept connections on {self.host}:{self.c2s_port} "
                    f"and {self.host}:{self.c2s_tls_port} (or did not write {self.cert_path}) "
                    f"within {STARTUP_TIMEOUT}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def write_config(path: Path, data_dir: Path, c2s: int, c2s_tls: int, extra: str = "",
                 component: int = 0) -> None:
    """Writes the test config; `extra` (TOML sections) is appended."""
    path.write_text(
        f"""\
domain = "{DOMAIN}"
data_dir = "{data_dir}"
admins = ["admin@{DOMAIN}"]

[listen]
c2s = "{HOST}:{c2s}"
c2s_tls = "{HOST}:{c2s_tls}"
component = "{HOST}:{component}"

[limits]
max_offline_messages = 20
max_resources_per_user = 5
max_auth_failures = 3
auth_failure_delay_ms = 20
auth_failure_delay_max_ms = 200
login_timeout = 15
"""
        + extra
    )


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Make each phase's report reachable from fixtures (request.node.rep_call).
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def tributary_binary() -> Path:
    binary = tributary_bin()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"tributary binary not found at {binary}: run `cargo build -p tributary` "
            f"or set TRIBUTARY_BIN",
            pytrace=False,
        )
    return binary


def _running_server(request, tmp_path, extra_config: str = ""):
    """Generator behind the server fixtures: starts a node with the accounts
    in USERS, yields it, stops it and shows its log tail on failure."""
    data_dir = tmp_path / "data"
    srv = Server(
        domain=DOMAIN,
        host=HOST,
        c2s_port=free_port(),
        c2s_tls_port=free_port(),
        data_dir=data_dir,
        config_path=tmp_path / "tributary.toml",
        log_path=tmp_path / "tributary.log",
    )
    while srv.c2s_tls_port == srv.c2s_port:
        srv.c2s_tls_port = free_port()
    srv.component_port = free_port()
    while srv.component_port in (srv.c2s_port, srv.c2s_tls_port):
        srv.component_port = free_port()
    write_config(srv.config_path, data_dir, srv.c2s_port, srv.c2s_tls_port, extra_config,
                 srv.component_port)
    for user, password in USERS.items():
        srv.add_user(user, password)
    died = None
    try:
        srv.start()
        yield srv
        if srv.proc.poll() is not None:
            died = srv.proc.returncode
    finally:
        srv.stop()
        failed = any(
            getattr(getattr(request.node, "rep_" + phase, None), "failed", False)
            for phase in ("setup", "call")
        )
        if failed or (srv.proc is not None and srv.proc.returncode not in (None, 0, -15)):
            sys.stderr.write(
                f"\n----- tributary log tail ({srv.log_path}, exit status "
                f"{srv.proc.returncode if srv.proc else 'n/a'}) -----\n"
                f"{srv.log_tail()}\n----- end of tributary log -----\n"
            )
        if not failed and os.environ.get("TRIBUTARY_KEEP_DATA") != "1":
            shutil.rmtree(data_dir, ignore_errors=True)
    if died is not None:
        pytest.fail(
            f"tributary serve exited by itself during the test (status {died}); "
            f"log tail:\n{srv.log_tail()}",
            pytrace=False,
        )


@pytest.fixture
def server(request, tmp_path, tributary_binary) -> Server:
    """A running tributary node with the accounts in USERS (default timers)."""
    yield from _running_server(request, tmp_path)


# Short XEP-0198 / keepalive timers: a silent peer is pinged after
# IDLE_PING s, treated as lost DEAD_AFTER s later, and its detached session
# expires RESUME_TIMEOUT s after that.
FAST_IDLE_PING = 1
FAST_DEAD_AFTER = 1
FAST_RESUME_TIMEOUT = 3


@pytest.fixture
def fast_server(request, tmp_path, tributary_binary) -> Server:
    """Like `server`, with the short timers above so dead-peer detection and
    session expiry happen within seconds."""
    yield from _running_server(request, tmp_path, f"""
[stream_management]
resume_timeout = {FAST_RESUME_TIMEOUT}

[keepalive]
idle_ping = {FAST_IDLE_PING}
dead_after = {FAST_DEAD_AFTER}
""")


COMPONENT_DOMAIN = "collect.localhost"
COMPONENT_SECRET = "s3cret"


@pytest.fixture
def component_server(request, tmp_path, tributary_binary) -> Server:
    """Like `server`, with one XEP-0114 component domain declared."""
    yield from _running_server(request, tmp_path, f"""
[[component]]
domain = "{COMPONENT_DOMAIN}"
secret = "{COMPONENT_SECRET}"
""")
