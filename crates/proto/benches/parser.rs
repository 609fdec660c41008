//! The per-stanza parsing work of a c2s connection, and the string round
//! trip of a queued stanza.
//!
//! - `framer/*`: a stream header then `STANZAS` stanzas through
//!   `xml::Framer`, the bytes arriving in one chunk or in 1,500-byte
//!   chunks (one Ethernet MTU per read); throughput is stanzas (frames).
//! - `to_string/*`: `stanza::to_string` of a parsed stanza, as the queue
//!   stores it.
//! - `queue_form/*`: what the queue stores of a client's stanza: a copy
//!   moved to `jabber:component:accept`, serialised.
//! - `parse_stored/*`: a stored stanza string back into a minidom
//!   `Element`, as the queue dispatcher does per item.
//!
//! `cargo bench -p tributary-proto --bench parser -- --noplot`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tributary_proto::xml::{Frame, Framer};
use tributary_proto::Element;
use tributary_proto::{ns, stanza};

/// Stanzas per iteration of the framer benches.
const STANZAS: usize = 1_000;
/// The default `limits.max_stanza_bytes`.
const MAX_STANZA_BYTES: usize = 262_144;
/// One read per MTU-sized segment.
const CHUNK: usize = 1_500;

/// The stream header a client sends after SASL.
const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' xml:lang='en'>";

/// A report as `tributary report` sends it (docs/protocol.md): ~300 bytes.
fn report(n: usize) -> String {
    let id = format!("R-1764064800000-3f2a9c41d07be865-{n}");
    format!(
        "<message to='collect.localhost' id='{id}'>\
         <report xmlns='urn:tributary:report:0' id='{id}' kind='meter.reading' at='2026-11-25T10:00:00Z'>\
         <json xmlns='urn:xmpp:json:0'>{{\"meter\":\"A-{m}\",\"kwh\":{kwh}.5,\"v\":231.2}}</json>\
         </report><request xmlns='urn:xmpp:receipts'/></message>",
        m = n % 1000,
        kwh = 1000 + n,
    )
}

/// A chat message as `tributary bench chat` sends it.
fn chat(n: usize) -> String {
    format!(
        "<message to='bench{to}@localhost' type='chat' id='c-{n}'>\
         <body>{n:x} 1764064800123456789 hello from bench{from}, how are you doing today?</body></message>",
        to = (n * 7) % 1000,
        from = n % 1000,
    )
}

fn stream(make: fn(usize) -> String) -> Vec<u8> {
    let mut s = String::from(HEADER);
    for n in 0..STANZAS {
        s.push_str(&make(n));
    }
    s.into_bytes()
}

/// Feeds the chunks to a fresh framer; returns the number of stanzas.
fn frame<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut framer = Framer::new(MAX_STANZA_BYTES);
    let mut stanzas = 0;
    for chunk in chunks {
        let mut rest = chunk;
        while let Some(frame) = framer.next_frame(&mut rest).expect("valid stream") {
            if let Frame::Element(el) = frame {
                black_box(&el);
                stanzas += 1;
            }
        }
    }
    stanzas
}

/// The element the server holds after negotiation: parsed by the framer,
/// `from` stamped with the bound JID.
fn parsed(xml: &str) -> Element {
    let mut framer = Framer::new(MAX_STANZA_BYTES);
    let bytes = format!("{HEADER}{xml}");
    let mut rest = bytes.as_bytes();
    loop {
        match framer.next_frame(&mut rest).expect("valid stream") {
            Some(Frame::Element(mut el)) => {
                stanza::set_attr(
                    &mut el,
                    "from",
                    "collector17@localhost/tributary-5e1f0c9a2b7d4e83",
                );
                return el;
            }
            Some(_) => continue,
            None => panic!("no stanza in {xml}"),
        }
    }
}

fn framer(c: &mut Criterion) {
    let mut g = c.benchmark_group("framer");
    g.throughput(Throughput::Elements(STANZAS as u64));
    for (kind, make) in [("report", report as fn(usize) -> String), ("chat", chat)] {
        let bytes = stream(make);
        eprintln!(
            "framer/{kind}: {STANZAS} stanzas, {} bytes each on average",
            (bytes.len() - HEADER.len()) / STANZAS
        );
        assert_eq!(frame(std::iter::once(&bytes[..])), STANZAS);
        assert_eq!(frame(bytes.chunks(CHUNK)), STANZAS);
        g.bench_with_input(BenchmarkId::new(kind, "one_chunk"), &bytes, |b, bytes| {
            b.iter(|| frame(std::iter::once(&bytes[..])))
        });
        g.bench_with_input(
            BenchmarkId::new(kind, "1500B_chunks"),
            &bytes,
            |b, bytes| b.iter(|| frame(bytes.chunks(CHUNK))),
        );
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let stanzas = [("report", parsed(&report(42))), ("chat", parsed(&chat(42)))];

    let mut g = c.benchmark_group("to_string");
    g.throughput(Throughput::Elements(1));
    for (kind, el) in &stanzas {
        g.bench_with_input(*kind, el, |b, el| b.iter(|| stanza::to_string(el)));
    }
    g.finish();

    let mut g = c.benchmark_group("queue_form");
    g.throughput(Throughput::Elements(1));
    for (kind, el) in &stanzas {
        g.bench_with_input(*kind, el, |b, el| {
            b.iter(|| stanza::to_string(&stanza::translated(el, ns::CLIENT, ns::COMPONENT_ACCEPT)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("parse_stored");
    g.throughput(Throughput::Elements(1));
    for (kind, el) in &stanzas {
        let stored = stanza::to_string(el);
        eprintln!("parse_stored/{kind}: {} bytes stored", stored.len());
        let back: Element = stored.parse().expect("stored stanza parses");
        assert_eq!(&back, el);
        g.bench_with_input(*kind, &stored, |b, stored| {
            b.iter(|| stored.parse::<Element>().expect("stored stanza parses"))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = framer, round_trip
}
criterion_main!(benches);
