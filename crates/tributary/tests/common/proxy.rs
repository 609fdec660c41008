//! Fault-injection TCP proxy for tests: sits between a client and the
//! server on loopback and breaks the link on command (cut, stall,
//! blackhole, cut after a chosen byte).
//!
//! Every accepted connection gets its own control channel (a `watch` of
//! [`Mode`]). Commands act on the connections registered at the time of the
//! call; connections accepted later start out forwarding normally.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Budget value meaning "no byte-count cut armed".
const DISARMED: u64 = u64::MAX;

/// What a connection's pumps do with the bytes they see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Copy bytes through.
    Flow,
    /// Stop reading; anything already read is held until the mode changes.
    Stall,
    /// Read and discard; never write, never close.
    Blackhole,
    /// End the connection: both sockets are dropped.
    Cut,
}

#[derive(Default)]
struct Registry {
    /// Set by `Drop`: connections accepted after that are refused.
    closed: bool,
    conns: Vec<Arc<watch::Sender<Mode>>>,
}

struct Shared {
    registry: Mutex<Registry>,
    accepted: AtomicUsize,
    /// Bytes forwarded client->server / server->client.
    c2s: AtomicU64,
    s2c: AtomicU64,
    /// Bytes left before a byte-count cut fires, or `DISARMED`.
    c2s_budget: AtomicU64,
    s2c_budget: AtomicU64,
}

impl Shared {
    /// Switches every live connection whose mode is in `from` to `to`;
    /// with `forget`, also unregisters them all.
    fn each(&self, from: &[Mode], to: Mode, forget: bool) {
        let mut reg = self.registry.lock().expect("proxy registry");
        reg.conns.retain(|c| !c.is_closed());
        for conn in &reg.conns {
            conn.send_if_modified(|m| from.contains(m) && std::mem::replace(m, to) != to);
        }
        if forget {
            reg.conns.clear();
        }
    }

    fn cut(&self) {
        use Mode::*;
        self.each(&[Flow, Stall, Blackhole], Cut, true);
    }
}

/// A loopback TCP proxy with fault injection; see the module docs.
pub struct Proxy {
    addr: String,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards every accepted connection to
    /// `upstream` ("127.0.0.1:port").
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let shared = Arc::new(Shared {
            registry: Mutex::default(),
            accepted: AtomicUsize::new(0),
            c2s: AtomicU64::new(0),
            s2c: AtomicU64::new(0),
            c2s_budget: AtomicU64::new(DISARMED),
            s2c_budget: AtomicU64::new(DISARMED),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Closes every current connection, both directions (the client sees
    /// EOF or a reset, the server sees EOF). New connections still work.
    pub fn cut(&self) {
        self.shared.cut();
    }

    /// Stops forwarding both ways on current connections; sockets stay open
    /// and bytes are held back (not dropped) until [`Proxy::resume_flow`].
    pub fn stall(&self) {
        self.shared.each(&[Mode::Flow], Mode::Stall, false);
    }

    /// Releases the connections held by [`Proxy::stall`].
    pub fn resume_flow(&self) {
        self.shared.each(&[Mode::Stall], Mode::Flow, false);
    }

    /// Silently discards all bytes both ways on current connections while
    /// keeping them open, so neither end notices. Later connections are
    /// not affected.
    pub fn blackhole(&self) {
        let from = [Mode::Flow, Mode::Stall];
        self.shared.each(&from, Mode::Blackhole, false);
    }

    /// Returns every current (not cut) connection to normal forwarding,
    /// ending a stall or blackhole, and disarms pending byte-count cuts.
    pub fn clear(&self) {
        self.shared.c2s_budget.store(DISARMED, SeqCst);
        self.shared.s2c_budget.store(DISARMED, SeqCst);
        let from = [Mode::Stall, Mode::Blackhole];
        self.shared.each(&from, Mode::Flow, false);
    }

    /// Cuts all connections once exactly `n` more bytes have been forwarded
    /// client->server (counted across connections). `0` cuts now.
    pub fn cut_after_client_bytes(&self, n: u64) {
        self.arm(&self.shared.c2s_budget, n);
    }

    /// Like [`Proxy::cut_after_client_bytes`], counting server->client.
    pub fn cut_after_server_bytes(&self, n: u64) {
        self.arm(&self.shared.s2c_budget, n);
    }

    fn arm(&self, budget: &AtomicU64, n: u64) {
        if n == 0 {
            budget.store(DISARMED, SeqCst);
            self.cut();
        } else {
            budget.store(n.min(DISARMED - 1), SeqCst);
        }
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(SeqCst)
    }

    /// Bytes forwarded so far: (client->server, server->client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.shared.c2s.load(SeqCst), self.shared.s2c.load(SeqCst))
    }
}

impl Drop for Proxy {
    /// Stops accepting and cuts every connection, ending all tasks.
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.registry.lock().expect("proxy registry").closed = true;
        self.shared.cut();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        shared.accepted.fetch_add(1, SeqCst);
        let (tx, rx) = watch::channel(Mode::Flow);
        let tx = Arc::new(tx);
        {
            let mut reg = shared.registry.lock().expect("proxy registry");
            if reg.closed {
                return;
            }
            reg.conns.retain(|c| !c.is_closed());
            reg.conns.push(tx.clone());
        }
        tokio::spawn(connection(client, upstream.clone(), tx, rx, shared.clone()));
    }
}

async fn connection(
    mut client: TcpStream,
    upstream: String,
    tx: Arc<watch::Sender<Mode>>,
    mut rx: watch::Receiver<Mode>,
    shared: Arc<Shared>,
) {
    let mut server = tokio::select! {
        r = TcpStream::connect(&upstream) => match r { Ok(s) => s, Err(_) => return },
        _ = rx.wait_for(|m| *m == Mode::Cut) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.split();
    let (sr, sw) = server.split();
    let s = &shared;
    tokio::join!(
        pump(cr, sw, &tx, rx.clone(), s, &s.c2s, &s.c2s_budget),
        pump(sr, cw, &tx, rx, s, &s.s2c, &s.s2c_budget),
    );
    // Both sockets drop here, closing the connection.
}

/// Copies `from` to `to` under the connection's mode until EOF, an I/O
/// error (which cuts the whole connection) or a cut.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    tx: &watch::Sender<Mode>,
    mut rx: watch::Receiver<Mode>,
    shared: &Shared,
    counter: &AtomicU64,
    budget: &AtomicU64,
) {
    let mut buf = [0u8; 4096];
    loop {
        // Wait out a stall before reading (bytes stay in the kernel).
        let Ok(mode) = rx.wait_for(|m| *m != Mode::Stall).await.map(|m| *m) else {
            return;
        };
        if mode == Mode::Cut {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => r,
            _ = rx.changed() => continue,
        };
        let n = match n {
            Ok(0) => {
                // Half-close: pass EOF on, unless the link is blackholed.
                if *rx.borrow() == Mode::Flow {
                    let _ = to.shutdown().await;
                }
                return;
            }
            Ok(n) => n,
            Err(_) => return cut_one(tx),
        };
        // Hold what was read while stalled; then forward, discard or quit.
        let Ok(mode) = rx.wait_for(|m| *m != Mode::Stall).await.map(|m| *m) else {
            return;
        };
        match mode {
            Mode::Cut => return,
            Mode::Blackhole | Mode::Stall => continue,
            Mode::Flow => {}
        }
        let (take, fire) = take_budget(budget, n as u64);
        let write = to.write_all(&buf[..take as usize]);
        let ok = tokio::select! {
            r = write => r.is_ok(),
            _ = rx.wait_for(|m| *m == Mode::Cut) => return,
        };
        if !ok {
            return cut_one(tx);
        }
        counter.fetch_add(take, SeqCst);
        if fire {
            shared.cut();
            return;
        }
    }
}

fn cut_one(tx: &watch::Sender<Mode>) {
    tx.send_replace(Mode::Cut);
}

/// Takes up to `n` bytes from `budget`: returns how many may be forwarded
/// and whether that exhausts it (the cut must fire after writing them).
fn take_budget(budget: &AtomicU64, n: u64) -> (u64, bool) {
    let mut cur = budget.load(SeqCst);
    loop {
        if cur == DISARMED {
            return (n, false);
        }
        let take = n.min(cur);
        let next = if take == cur { DISARMED } else { cur - take };
        match budget.compare_exchange(cur, next, SeqCst, SeqCst) {
            Ok(_) => return (take, take == cur),
            Err(actual) => cur = actual,
        }
    }
}
