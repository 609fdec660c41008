//! Self-tests for the fault-injection proxy in `common::proxy`, run
//! against a tiny in-test echo server.

mod common;

use common::proxy::Proxy;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(2);
const QUIET: Duration = Duration::from_millis(300);

/// Starts an echo server; each finished connection reports the bytes it
/// received on the returned channel.
async fn echo_server() -> (String, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr").to_string();
    let (done, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let done = done.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = sock.read(&mut buf).await {
                    got.extend_from_slice(&buf[..n]);
                    if sock.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = done.send(got);
            });
        }
    });
    (addr, seen)
}

async fn setup() -> (Proxy, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (echo, seen) = echo_server().await;
    (Proxy::start(echo).await, seen)
}

async fn connect(proxy: &Proxy) -> TcpStream {
    let sock = timeout(BOUND, TcpStream::connect(proxy.addr()))
        .await
        .expect("connect in time")
        .expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    sock
}

/// Writes `msg` and expects it echoed back through the proxy.
async fn round_trip(sock: &mut TcpStream, msg: &[u8]) {
    sock.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    timeout(BOUND, sock.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, msg);
}

/// Reads until EOF or error (both count as closed); panics if the
/// connection is still open after `BOUND`.
async fn read_to_close(sock: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match timeout(BOUND, sock.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {BOUND:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Asserts nothing (not even EOF) arrives for `QUIET`.
async fn assert_quiet(sock: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let r = timeout(QUIET, sock.read(&mut buf)).await;
    assert!(r.is_err(), "expected silence, got {r:?}");
}

#[tokio::test]
async fn forwards_both_ways() {
    let (proxy, mut seen) = setup().await;
    let mut sock = connect(&proxy).await;
    round_trip(&mut sock, b"hello").await;

    // A payload much larger than the pump buffer, written concurrently.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = sock.into_split();
    let payload = big.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&payload).await.expect("write big");
        wr.shutdown().await.expect("half-close");
    });
    let mut back = Vec::new();
    timeout(BOUND, rd.read_to_end(&mut back))
        .await
        .expect("echo + EOF in time")
        .expect("read big");
    writer.await.expect("writer");
    assert_eq!(back, big, "echo after half-close");

    let total = 5 + big.len() as u64;
    assert_eq!(proxy.bytes(), (total, total));
    assert_eq!(proxy.connections(), 1);
    let got = timeout(BOUND, seen.recv()).await.expect("server done");
    assert_eq!(got.expect("report").len() as u64, total);
}

#[tokio::test]
async fn cut_closes_live_connection_and_new_ones_work() {
    let (proxy, mut seen) = setup().await;
    let mut sock = connect(&proxy).await;
    round_trip(&mut sock, b"before").await;
    proxy.cut();
    assert!(read_to_close(&mut sock).await.is_empty());
    let got = timeout(BOUND, seen.recv()).await.expect("server saw EOF");
    assert_eq!(got.expect("report"), b"before");

    let mut again = connect(&proxy).await;
    round_trip(&mut again, b"after").await;
    assert_eq!(proxy.connections(), 2);
}

#[tokio::test]
async fn stall_holds_bytes_until_resume() {
    let (proxy, _seen) = setup().await;
    let mut sock = connect(&proxy).await;
    round_trip(&mut sock, b"ping").await;
    proxy.stall();
    sock.write_all(b"held").await.expect("write while stalled");
    assert_quiet(&mut sock).await;
    assert_eq!(proxy.bytes(), (4, 4));
    proxy.resume_flow();
    let mut back = [0u8; 4];
    timeout(BOUND, sock.read_exact(&mut back))
        .await
        .expect("released in time")
        .expect("read released");
    assert_eq!(&back, b"held");
}

#[tokio::test]
async fn blackhole_drops_bytes_without_closing() {
    let (proxy, _seen) = setup().await;
    let mut sock = connect(&proxy).await;
    round_trip(&mut sock, b"ping").await;
    proxy.blackhole();
    for _ in 0..3 {
        sock.write_all(b"lost").await.expect("write into blackhole");
    }
    assert_quiet(&mut sock).await;
    sock.write_all(b"still open")
        .await
        .expect("write still works");
    assert_eq!(proxy.bytes(), (4, 4), "nothing forwarded");

    // Only current connections are blackholed.
    let mut fresh = connect(&proxy).await;
    round_trip(&mut fresh, b"fresh").await;
    assert_quiet(&mut sock).await;
}

#[tokio::test]
async fn cut_after_client_bytes_is_exact() {
    let (proxy, mut seen) = setup().await;
    let mut sock = connect(&proxy).await;
    proxy.cut_after_client_bytes(5);
    sock.write_all(b"helloworld").await.expect("write");
    let back = read_to_close(&mut sock).await;
    assert!(b"hello".starts_with(&back), "echoed {back:?}");
    let got = timeout(BOUND, seen.recv()).await.expect("server done");
    assert_eq!(got.expect("report"), b"hello");
    assert_eq!(proxy.bytes().0, 5);

    // The cut fired once; later connections are unaffected.
    let mut again = connect(&proxy).await;
    round_trip(&mut again, b"helloworld").await;
}

#[tokio::test]
async fn cut_after_server_bytes_counts_across_connections() {
    let (proxy, _seen) = setup().await;
    let mut first = connect(&proxy).await;
    proxy.cut_after_server_bytes(6);
    round_trip(&mut first, b"abcd").await;
    let mut second = connect(&proxy).await;
    second.write_all(b"efgh").await.expect("write");
    let back = read_to_close(&mut second).await;
    assert!(b"ef".starts_with(&back), "echoed {back:?}");
    assert!(read_to_close(&mut first).await.is_empty());
    assert_eq!(proxy.bytes().1, 6);
}

#[tokio::test]
async fn drop_closes_connections() {
    let (proxy, _seen) = setup().await;
    let mut sock = connect(&proxy).await;
    round_trip(&mut sock, b"x").await;
    drop(proxy);
    assert!(read_to_close(&mut sock).await.is_empty());
}
