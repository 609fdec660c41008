"""Fault-injection TCP proxy for the slixmpp integration tests.

Listens on 127.0.0.1:<free port> and forwards every accepted connection to
an upstream address (the server's c2s port). It runs in the test's own
event loop. Commands act on the connections open at the time of the call;
connections accepted later forward normally:

* cut(): closes both sockets of every current connection at once, as if
  the network dropped (the client and the server both see the connection
  end).
* blackhole(): every current connection keeps both sockets open but
  silently discards whatever either side sends, and never closes the
  other side when one side closes (a phone in a tunnel: nobody notices
  anything until a timer fires).

Python counterpart of crates/tributary/tests/common/proxy.rs.
"""

from __future__ import annotations

import asyncio
import enum

CHUNK = 65536


class Mode(enum.Enum):
    FLOW = "flow"
    BLACKHOLE = "blackhole"
    CUT = "cut"


class _Conn:
    def __init__(self, proxy: "Proxy", client_r: asyncio.StreamReader,
                 client_w: asyncio.StreamWriter):
        self.proxy = proxy
        self.client_r = client_r
        self.client_w = client_w
        self.server_w: asyncio.StreamWriter | None = None
        self.mode = Mode.FLOW
        self.tasks: list[asyncio.Task] = []

    async def run(self) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.proxy.upstream)
        except OSError:
            self.client_w.transport.abort()
            return
        self.server_w = server_w
        if self.mode is Mode.CUT:  # cut while connecting
            self.close()
            return
        self.tasks = [
            asyncio.ensure_future(self._pump(self.client_r, server_w, "c2s")),
            asyncio.ensure_future(self._pump(server_r, self.client_w, "s2c")),
        ]
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.mode is Mode.FLOW:
            self.close(graceful=True)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    direction: str) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    # One side closed. Forwarding: pass the close on after
                    # what was already forwarded (both directions end).
                    # Blackholed: the other side never learns of it.
                    if self.mode is Mode.FLOW:
                        self.close(graceful=True)
                    return
                if self.mode is Mode.FLOW:
                    self.proxy.bytes[direction] += len(data)
                    dst.write(data)
                    await dst.drain()
                elif self.mode is Mode.BLACKHOLE:
                    self.proxy.discarded[direction] += len(data)
                else:
                    return
        except (ConnectionError, OSError):
            if self.mode is Mode.FLOW:
                self.close()

    def close(self, graceful: bool = False) -> None:
        """Closes both sockets: gracefully (after flushing what was already
        forwarded) or at once, discarding anything unsent."""
        for w in (self.client_w, self.server_w):
            if w is not None:
                if graceful:
                    w.close()
                else:
                    w.transport.abort()
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()

    def cut(self) -> None:
        self.mode = Mode.CUT
        self.close()

    def blackhole(self) -> None:
        if self.mode is Mode.FLOW:
            self.mode = Mode.BLACKHOLE


class Proxy:
    """A loopback TCP proxy with fault injection; see the module docs.

    Use inside a running event loop:
        proxy = await Proxy.start((host, port))
        ... proxy.cut() / proxy.blackhole() ...
        await proxy.close()
    """

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0  # accepted so far
        self.bytes = {"c2s": 0, "s2c": 0}  # forwarded
        self.discarded = {"c2s": 0, "s2c": 0}  # swallowed by a blackhole
        self._live: list[_Conn] = []
        self._all: list[_Conn] = []
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.base_events.Server | None = None

    @classmethod
    async def start(cls, upstream: tuple[str, int]) -> "Proxy":
        proxy = cls(upstream)
        proxy._server = await asyncio.start_server(proxy._accept, proxy.host, 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        return proxy

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = _Conn(self, reader, writer)
        self._live.append(conn)
        self._all.append(conn)
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await conn.run()
        finally:
            self._tasks.discard(task)
            if conn in self._live and conn.mode is not Mode.BLACKHOLE:
                self._live.remove(conn)

    def cut(self) -> int:
        """Closes every current connection; returns how many were cut."""
        conns, self._live = self._live, []
        for c in conns:
            c.cut()
        return len(conns)

    def blackhole(self) -> int:
        """Silences every current connection; returns how many."""
        n = 0
        for c in self._live:
            if c.mode is Mode.FLOW:
                c.blackhole()
                n += 1
        return n

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in self._all:
            c.cut()
        self._live = []
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass
