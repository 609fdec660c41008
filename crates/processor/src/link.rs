//! The processor's side of a component connection: connect, handshake,
//! enable XEP-0198, receive stanzas in batches, hand each batch to the
//! [`Processor`], and only then acknowledge it (`<a h/>`) and confirm to
//! the reporters. Reconnects by itself with capped, jittered back-off, and
//! follows a `<see-other-host/>` redirect.

use crate::report::{self, Item, Outcome, NS_RECEIPTS};
use crate::Processor;
use anyhow::{anyhow, bail, Context};
use minidom::Element;
use rand::Rng;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tributary_proto::component::handshake_digest;
use tributary_proto::error::{escape, StanzaErrorCondition};
use tributary_proto::pacing::CommitPacer;
use tributary_proto::xml::{Frame, Framer};
use tributary_proto::{ns, sm, stanza};

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// host:port of the node's component listener.
    pub server: String,
    pub domain: String,
    pub secret: String,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Group-commit delay: while batches follow each other closely (see
    /// [`tributary_proto::pacing`]),
    /// a batch waits this long after its first frame for more to arrive.
    /// Each batch costs a commit (an fsync) and thread hand-offs to the
    /// database driver whatever its size, so under load fewer, larger
    /// batches take less CPU per report; an idle link never waits. Zero:
    /// a batch is what has arrived when the first frame is complete.
    pub commit_delay: Duration,
}

/// `tributary process --commit-delay-ms`'s default. `bench report`, 1,000
/// clients, node and processor on one core, on disk: at 4,000 reports/s the
/// processor took 750 and 747 CPU ticks per run without it, 574 and 592
/// with 2 ms; at 5,000/s 693 (p50 processed 19.0 ms) against 564 (8.9 ms),
/// and 626 (10.9 ms) with 1 ms.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);

/// Counters the HTTP API shows.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connected: AtomicBool,
    pub processed: AtomicU64,
    pub failed: AtomicU64,
    pub connections: AtomicU64,
}

enum End {
    /// The node sent us elsewhere (`<see-other-host/>`).
    Redirect(String),
}

/// Serves the component domain until the process ends.
pub async fn run<P: Processor>(config: LinkConfig, mut processor: P, stats: Arc<LinkStats>) {
    let mut server = config.server.clone();
    let mut backoff = Duration::from_millis(100);
    // Redirected since the last session that got through the handshake: a
    // redirect is followed at once, but a chain (or a loop) of them waits
    // like any reconnection.
    let mut redirected = false;
    loop {
        let sessions = stats.connections.load(Ordering::Relaxed);
        let ended = session(&config, &server, &mut processor, &stats).await;
        if stats.connections.load(Ordering::Relaxed) != sessions {
            redirected = false;
        }
        stats.connected.store(false, Ordering::Relaxed);
        match ended {
            Ok(End::Redirect(to)) => {
                let to = redirect_address(&to, &server);
                tracing::info!(%to, "redirected by the node");
                server = to;
                if !redirected {
                    redirected = true;
                    backoff = Duration::from_millis(100);
                    continue;
                }
            }
            Err(e) => tracing::warn!(%server, "connection to the node ended: {e:#}"),
        }
        // Jitter spreads the reconnections of many processors after a
        // node restart.
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

/// The host:port to connect to for a `<see-other-host/>` target. RFC 6120
/// 4.9.3.19: a domainpart (FQDN, IPv4 address, or IPv6 address in
/// brackets), optionally followed by ":port"; without a port, the port of
/// the current connection (`current`) is kept.
fn redirect_address(target: &str, current: &str) -> String {
    if target.parse::<SocketAddr>().is_ok() {
        return target.to_owned();
    }
    let Some(port) = current
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
    else {
        return target.to_owned();
    };
    let bare = target
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(target);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return SocketAddr::new(ip, port).to_string();
    }
    match target.rsplit_once(':') {
        Some((host, p)) if !host.is_empty() && p.parse::<u16>().is_ok() => target.to_owned(),
        _ => format!("{target}:{port}"),
    }
}

/// Most frames in one batch: a bound on one commit's size, half the
/// node's default window (2,048) so the next batch arrives while this one
/// commits, and as many reports as the reference processor commits in one
/// statement (one round trip to the database, not BEGIN, INSERTs and
/// COMMIT). Each commit is an fsync: on a disk, fewer and larger batches
/// drain a backlog faster than batches of 500 (see the commit message).
const BATCH_FRAMES: usize = crate::sql::REPORT_ROWS_PER_STATEMENT;

struct Stream {
    tcp: TcpStream,
    framer: Framer,
    buf: Vec<u8>,
    pending: Vec<u8>,
    /// When a batch waits for more: how busy the link has been.
    pacer: CommitPacer,
}

impl Stream {
    fn new(tcp: TcpStream, commit_delay: Duration) -> Stream {
        Stream {
            tcp,
            framer: Framer::new(16 << 20),
            buf: vec![0u8; 64 * 1024],
            pending: Vec::new(),
            pacer: CommitPacer::new(commit_delay),
        }
    }

    async fn write(&mut self, data: &str) -> anyhow::Result<()> {
        self.tcp.write_all(data.as_bytes()).await.context("write")?;
        Ok(())
    }

    /// Reads until at least one frame is complete; returns the complete
    /// frames, with whatever else has already arrived (or arrives within
    /// the commit delay, on a busy link), up to `BATCH_FRAMES` (the rest
    /// stays in `pending` for the next batch).
    async fn frames(&mut self) -> anyhow::Result<Vec<Frame>> {
        let mut out = Vec::new();
        let mut gather_until = None;
        loop {
            let mut slice: &[u8] = &self.pending;
            while out.len() < BATCH_FRAMES {
                match self.framer.next_frame(&mut slice) {
                    Ok(Some(f)) => out.push(f),
                    Ok(None) => break,
                    Err(e) => bail!("bad XML from the node: {e}"),
                }
            }
            let used = self.pending.len() - slice.len();
            self.pending.drain(..used);
            if out.len() >= BATCH_FRAMES {
                return Ok(self.hand_over(out));
            }
            if !out.is_empty() && gather_until.is_none() {
                gather_until = Some(self.pacer.gather_until(Instant::now()));
            }
            let n = if out.is_empty() {
                self.tcp.read(&mut self.buf).await
            } else {
                // Whatever else has arrived joins this batch: one commit
                // (one fsync) for all of it, not one per 64 KiB read.
                match self.tcp.try_read(&mut self.buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let deadline = gather_until.flatten();
                        match deadline {
                            Some(d) if timeout_at(d.into(), self.tcp.readable()).await.is_ok() => {
                                continue
                            }
                            _ => return Ok(self.hand_over(out)),
                        }
                    }
                    read => read,
                }
            }
            .context("read")?;
            if n == 0 {
                bail!("the node closed the connection");
            }
            self.pending.extend_from_slice(&self.buf[..n]);
        }
    }

    fn hand_over(&mut self, batch: Vec<Frame>) -> Vec<Frame> {
        self.pacer.committed(Instant::now());
        batch
    }
}

/// A stream error's condition, and the redirect target if it is one.
fn stream_error(el: &Element) -> (String, Option<String>) {
    let cond = el
        .children()
        .find(|c| c.ns() == ns::STREAMS_ERR && c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_default();
    let target = (cond == "see-other-host")
        .then(|| {
            el.get_child("see-other-host", ns::STREAMS_ERR)
                .map(|s| s.text().trim().to_owned())
        })
        .flatten()
        .filter(|t| !t.is_empty());
    (cond, target)
}

async fn session<P: Processor>(
    config: &LinkConfig,
    server: &str,
    processor: &mut P,
    stats: &LinkStats,
) -> anyhow::Result<End> {
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(server))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let mut s = Stream::new(tcp, config.commit_delay);
    s.write(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' to='{}'>",
        ns::COMPONENT_ACCEPT,
        ns::STREAM,
        escape(&config.domain)
    ))
    .await?;
    // Header, then the handshake answer.
    let mut id = None;
    let mut frames = std::collections::VecDeque::new();
    while id.is_none() {
        frames.extend(s.frames().await?);
        while let Some(f) = frames.pop_front() {
            match f {
                Frame::StreamOpen(h) => id = Some(h.id.unwrap_or_default()),
                Frame::Element(e) if e.name() == "error" => {
                    let (cond, target) = stream_error(&e);
                    return target
                        .map(End::Redirect)
                        .ok_or_else(|| anyhow!("stream error: {cond}"));
                }
                _ => {}
            }
            if id.is_some() {
                break;
            }
        }
    }
    let digest = handshake_digest(&id.unwrap_or_default(), &config.secret);
    s.write(&format!("<handshake>{digest}</handshake>")).await?;
    loop {
        if frames.is_empty() {
            frames.extend(s.frames().await?);
        }
        match frames.pop_front() {
            Some(Frame::Element(e)) if e.name() == "handshake" => break,
            Some(Frame::Element(e)) if e.name() == "error" => {
                let (cond, target) = stream_error(&e);
                return target
                    .map(End::Redirect)
                    .ok_or_else(|| anyhow!("refused: {cond}"));
            }
            Some(Frame::StreamClose) => bail!("the node closed the stream"),
            _ => {}
        }
    }
    s.write(&format!("<enable xmlns='{}'/>", sm::NS)).await?;
    stats.connected.store(true, Ordering::Relaxed);
    stats.connections.fetch_add(1, Ordering::Relaxed);
    tracing::info!(domain = %config.domain, %server, "connected to the node");

    // Stanzas handled (committed) on this stream: the h we report. XEP-0198
    // counts from `<enabled/>`: stanzas the node wrote before it are not
    // counted (it acknowledges those by our receipts instead).
    let mut handled: u32 = 0;
    let mut enabled = false;
    loop {
        if frames.is_empty() {
            frames.extend(s.frames().await?);
        }
        let mut batch = Vec::new();
        let mut counted: u32 = 0;
        let mut ack_requested = false;
        while let Some(f) = frames.pop_front() {
            match f {
                Frame::Element(e) if e.has_ns(sm::NS) => match e.name() {
                    "r" => ack_requested = true,
                    "enabled" => enabled = true,
                    "failed" => tracing::warn!("the node refused stream management"),
                    _ => {}
                },
                Frame::Element(e) if e.name() == "error" => {
                    let (cond, target) = stream_error(&e);
                    return target
                        .map(End::Redirect)
                        .ok_or_else(|| anyhow!("stream error: {cond}"));
                }
                Frame::Element(e) => {
                    if enabled {
                        counted += 1;
                    }
                    batch.push(e)
                }
                Frame::StreamClose => bail!("the node closed the stream"),
                _ => {}
            }
        }
        if !batch.is_empty() {
            let items: Vec<Item> = batch
                .iter()
                .map(|e| report::parse(e, ns::COMPONENT_ACCEPT))
                .collect();
            // Nothing is acknowledged unless the processor committed it.
            let outcomes = processor
                .process(&items)
                .await
                .context("processor failed")?;
            let mut out = String::new();
            for ((el, item), outcome) in batch.iter().zip(&items).zip(&outcomes) {
                match outcome {
                    Outcome::Done => stats.processed.fetch_add(1, Ordering::Relaxed),
                    Outcome::Failed(_) => stats.failed.fetch_add(1, Ordering::Relaxed),
                };
                confirm(&mut out, &config.domain, el, item, outcome);
            }
            handled = handled.wrapping_add(counted);
            // Unsolicited acks keep the node's in-flight window moving.
            if enabled {
                out.push_str(&format!("<a xmlns='{}' h='{handled}'/>", sm::NS));
            }
            if !out.is_empty() {
                s.write(&out).await?;
            }
        } else if ack_requested && enabled {
            s.write(&format!("<a xmlns='{}' h='{handled}'/>", sm::NS))
                .await?;
        }
    }
}

/// Writes to `out` the receipt, iq result or error that tells the reporter
/// what became of `el` (a stanza of the link, in `jabber:component:accept`),
/// if anything should.
fn confirm(out: &mut String, domain: &str, el: &Element, item: &Item, outcome: &Outcome) {
    let reply = match (item, outcome) {
        (Item::Report(r), Outcome::Done) if r.wants_receipt => {
            // Written straight as text: there is one per report, and a
            // tree built only to be serialised is most of its cost.
            out.push_str(&format!(
                "<message from='{}' to='{}'><received xmlns='{NS_RECEIPTS}' id='{}'/></message>",
                escape(domain),
                escape(&r.sender_full),
                escape(&r.id)
            ));
            return;
        }
        (Item::Report(r), Outcome::Done) if r.iq_id.is_some() => stanza::iq_result(el, None),
        // A refused report is answered with an error in either form, so
        // that a sender waiting for a receipt hears why instead.
        (Item::Report(_), Outcome::Failed(why)) => {
            stanza::error_reply(el, StanzaErrorCondition::NotAcceptable, Some(why))
        }
        (Item::Other, _)
            if el.name() == "iq" && matches!(stanza::stanza_type(el), Some("get" | "set")) =>
        {
            stanza::error_reply(el, StanzaErrorCondition::ServiceUnavailable, None)
        }
        _ => return,
    };
    out.push_str(&stanza::to_string(&stanza::translate(
        reply,
        ns::CLIENT,
        ns::COMPONENT_ACCEPT,
    )));
}

#[cfg(test)]
mod tests {
    use super::{confirm, redirect_address, stream_error, Stream, BATCH_FRAMES};
    use crate::report::{self, Outcome};
    use minidom::Element;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tributary_proto::ns;
    use tributary_proto::pacing::BUSY_WITHIN;
    use tributary_proto::xml::Frame;

    /// A stream of ours connected to a socket that plays the node.
    async fn linked(commit_delay: Duration) -> (Stream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (node, _) = accepted.expect("accept");
        (Stream::new(tcp.expect("connect"), commit_delay), node)
    }

    fn ids(frames: &[Frame]) -> Vec<&str> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Element(e) => e.attr("id"),
                _ => None,
            })
            .collect()
    }

    /// Writes `<message id='{id}'/>` after `after`.
    async fn send_later(node: &mut TcpStream, id: &str, after: Duration) {
        tokio::time::sleep(after).await;
        let data = format!("<message id='{id}'/>");
        node.write_all(data.as_bytes()).await.expect("write");
    }

    #[tokio::test]
    async fn a_busy_link_gathers_what_arrives_within_the_commit_delay() {
        let delay = Duration::from_millis(500);
        let (mut s, mut node) = linked(delay).await;
        node.write_all(
            b"<stream:stream xmlns='jabber:component:accept' \
              xmlns:stream='http://etherx.jabber.org/streams' id='x'><message id='A'/>",
        )
        .await
        .expect("write");
        // Idle (no batch before): A goes at once, B (sent later) is not waited for.
        let (first, ()) = tokio::join!(
            s.frames(),
            send_later(&mut node, "B", Duration::from_millis(100))
        );
        assert_eq!(ids(&first.expect("first batch")), ["A"]);
        assert_eq!(ids(&s.frames().await.expect("B")), ["B"]);
        // Busy (a batch just went): C waits for D, sent 100 ms later.
        node.write_all(b"<message id='C'/>").await.expect("write");
        let (gathered, ()) = tokio::join!(
            s.frames(),
            send_later(&mut node, "D", Duration::from_millis(100))
        );
        assert_eq!(ids(&gathered.expect("gathered batch")), ["C", "D"]);
        // Idle again after BUSY_WITHIN delays without a batch.
        tokio::time::sleep(delay * BUSY_WITHIN + Duration::from_millis(100)).await;
        node.write_all(b"<message id='E'/>").await.expect("write");
        let (alone, ()) = tokio::join!(
            s.frames(),
            send_later(&mut node, "F", Duration::from_millis(100))
        );
        assert_eq!(ids(&alone.expect("E")), ["E"]);
    }

    #[tokio::test]
    async fn a_batch_takes_at_most_batch_frames_of_what_has_arrived() {
        let (mut s, mut node) = linked(Duration::ZERO).await;
        // ~30 KB: all of it arrives in one read, more than a batch takes.
        let mut data = String::from(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' id='x'>",
        );
        for n in 0..1_200 {
            data.push_str(&format!("<message id='R-{n}'/>"));
        }
        node.write_all(data.as_bytes()).await.expect("write");
        let first = s.frames().await.expect("first batch");
        assert_eq!(first.len(), BATCH_FRAMES);
        assert!(matches!(first[0], Frame::StreamOpen(_)));
        let second = s.frames().await.expect("second batch");
        assert_eq!(second.len(), 1_201 - BATCH_FRAMES);
        let mut all = first;
        all.extend(second);
        let want: Vec<String> = (0..1_200).map(|n| format!("R-{n}")).collect();
        assert_eq!(ids(&all), want, "every stanza once, in order");
    }

    /// What `confirm` writes for a report from alice as the node sends it:
    /// a message, with a receipt request or not, or an iq set.
    fn confirmation(form: &str, outcome: Outcome) -> String {
        let report = "<report xmlns='urn:tributary:report:0' id='R-1'>\
                      <json xmlns='urn:xmpp:json:0'>{}</json></report>";
        let attrs =
            "xmlns='jabber:component:accept' from='alice@localhost/phone' to='collect.localhost'";
        let stanza = match form {
            "iq" => format!("<iq type='set' id='R-1' {attrs}>{report}</iq>"),
            "receipt" => format!(
                "<message id='R-1' {attrs}>{report}<request xmlns='urn:xmpp:receipts'/></message>"
            ),
            _ => format!("<message id='R-1' {attrs}>{report}</message>"),
        };
        let el: Element = stanza.parse().expect("xml");
        let item = report::parse(&el, ns::COMPONENT_ACCEPT);
        let mut out = String::new();
        confirm(&mut out, "collect.localhost", &el, &item, &outcome);
        out
    }

    /// `text` as one element of a component stream.
    fn on_the_link(text: &str) -> Element {
        format!("<stream xmlns='jabber:component:accept'>{text}</stream>")
            .parse::<Element>()
            .expect("xml")
            .children()
            .next()
            .cloned()
            .expect("one element")
    }

    #[test]
    fn reports_are_confirmed_as_they_asked_and_refusals_always() {
        let receipt = on_the_link(&confirmation("receipt", Outcome::Done));
        assert!(receipt.is("message", ns::COMPONENT_ACCEPT));
        assert_eq!(receipt.attr("to"), Some("alice@localhost/phone"));
        assert_eq!(receipt.attr("from"), Some("collect.localhost"));
        assert_eq!(
            receipt
                .get_child("received", "urn:xmpp:receipts")
                .and_then(|r| r.attr("id")),
            Some("R-1")
        );
        let result = on_the_link(&confirmation("iq", Outcome::Done));
        assert_eq!(
            (result.name(), result.attr("type"), result.attr("id")),
            ("iq", Some("result"), Some("R-1"))
        );
        assert_eq!(confirmation("message", Outcome::Done), "", "none asked for");
        for form in ["receipt", "message", "iq"] {
            let refused = on_the_link(&confirmation(form, Outcome::Failed("no meter".into())));
            assert_eq!(refused.attr("type"), Some("error"), "{form}");
            assert_eq!(refused.attr("id"), Some("R-1"), "{form}");
            assert_eq!(refused.attr("to"), Some("alice@localhost/phone"), "{form}");
            let error = refused
                .get_child("error", ns::COMPONENT_ACCEPT)
                .expect("error");
            assert!(error.has_child("not-acceptable", ns::STANZAS_ERR), "{form}");
        }
    }

    #[test]
    fn redirect_targets() {
        let cur = "10.0.0.1:5347";
        for (target, want) in [
            ("127.0.0.1:6000", "127.0.0.1:6000"),
            ("127.0.0.1", "127.0.0.1:5347"),
            ("[::1]:6000", "[::1]:6000"),
            ("[::1]", "[::1]:5347"),
            ("::1", "[::1]:5347"),
            ("node2.example:6000", "node2.example:6000"),
            ("node2.example", "node2.example:5347"),
        ] {
            assert_eq!(redirect_address(target, cur), want, "{target}");
        }
        assert_eq!(redirect_address("[::1]", "[::2]:7000"), "[::1]:7000");
    }

    #[test]
    fn see_other_host_without_a_target_is_not_a_redirect() {
        let error = |inner: &str| -> minidom::Element {
            format!(
                "<error xmlns='http://etherx.jabber.org/streams'>\
                 <see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{inner}</see-other-host></error>"
            )
            .parse()
            .expect("xml")
        };
        let (cond, target) = stream_error(&error(" "));
        assert_eq!((cond.as_str(), target), ("see-other-host", None));
        let (_, target) = stream_error(&error(" [::1]:5347 "));
        assert_eq!(target.as_deref(), Some("[::1]:5347"));
    }
}
