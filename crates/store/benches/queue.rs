//! The durable component queue on a real SQLite file (`synchronous=FULL`,
//! so each commit pays an fsync; that cost is what these measure).
//!
//! - `enqueue/N`: one `enqueue` of N ~300-byte report stanzas, each with
//!   a dedup key (the writer task's group commit). The queue is kept
//!   near empty: each batch is removed again, untimed.
//! - `queue_items/512`: one load of 512 items (the dispatcher's `LOAD`)
//!   from a queue holding 2,048.
//! - `queue_remove/N`: deleting N acknowledged items in one transaction
//!   (they were enqueued untimed just before).
//! - `queue_commit/N`: the writer's steady state: N new items and the
//!   deletion of N older ones in one transaction; throughput counts the
//!   N enqueued.
//!
//! The database lives under cargo's `CARGO_TARGET_TMPDIR` (target/tmp),
//! on the same file system as the build, not on a possible tmpfs `/tmp`.
//!
//! `cargo bench -p tributary-store --bench queue -- --noplot`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tributary_store::{Enqueued, NewQueueItem, SqliteStore, Store};

const QUEUE: &str = "collect.localhost";
/// The default `quota` of a component.
const QUOTA: u64 = 1_000_000;
/// The dispatcher's load size (`queue.rs`: `LOAD`).
const LOAD: usize = 512;

/// Makes queue items that have never been used, each a report as the node
/// stores it (`stanza::to_string` of the stamped message).
struct Items {
    next: u64,
}

impl Items {
    fn batch(&mut self, n: usize) -> Vec<NewQueueItem> {
        (0..n)
            .map(|_| {
                self.next += 1;
                let k = self.next % 1000;
                let id = format!("R-1764064800000-3f2a9c41d07be865-{}", self.next);
                let sender = format!("collector{k}@localhost/tributary-5e1f0c9a2b7d4e83");
                let stanza = format!(
                    "<message xmlns=\"jabber:component:accept\" from=\"{sender}\" id=\"{id}\" to=\"{QUEUE}\">\
                     <report xmlns=\"urn:tributary:report:0\" at=\"2026-11-25T10:00:00Z\" id=\"{id}\" kind=\"meter.reading\">\
                     <json xmlns=\"urn:xmpp:json:0\">{{\"meter\":\"A-{k}\",\"kwh\":{kwh}.5,\"v\":231.2}}</json>\
                     </report><request xmlns=\"urn:xmpp:receipts\"/></message>",
                    kwh = 1000 + self.next,
                );
                NewQueueItem {
                    queue: QUEUE.to_owned(),
                    dedup: Some(format!("collector{k}@localhost\n{id}")),
                    sender,
                    stanza_id: Some(id),
                    stanza,
                    answerable: true,
                    quota: QUOTA,
                }
            })
            .collect()
    }
}

fn accepted(results: &[Enqueued]) -> Vec<i64> {
    results
        .iter()
        .map(|r| match r {
            Enqueued::Accepted(id) => *id,
            other => panic!("not accepted: {other:?}"),
        })
        .collect()
}

struct Bench {
    rt: tokio::runtime::Runtime,
    store: SqliteStore,
    items: Items,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::Builder::new()
            .prefix("queue-bench")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir");
        let store = rt
            .block_on(SqliteStore::open(&dir.path().join("tributary.sqlite")))
            .expect("store");
        let mut items = Items { next: 0 };
        let sample = items.batch(1);
        eprintln!(
            "queue bench: database in {}, {} bytes per stanza",
            dir.path().display(),
            sample[0].stanza.len()
        );
        Bench {
            rt,
            store,
            items,
            _dir: dir,
        }
    }

    fn enqueue(&mut self, n: usize) -> Vec<i64> {
        let batch = self.items.batch(n);
        accepted(
            &self
                .rt
                .block_on(self.store.enqueue(&batch))
                .expect("enqueue"),
        )
    }

    fn remove(&self, ids: &[i64]) {
        self.rt
            .block_on(self.store.queue_remove(ids))
            .expect("remove");
    }

    fn depth(&self) -> u64 {
        let depths = self.rt.block_on(self.store.queue_depths()).expect("depths");
        depths.iter().map(|d| d.depth).sum()
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
}

fn queue(c: &mut Criterion) {
    let mut bench = Bench::new();

    let mut g = c.benchmark_group("enqueue");
    for n in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let batch = bench.items.batch(n);
                    let start = Instant::now();
                    let results = bench
                        .rt
                        .block_on(bench.store.enqueue(&batch))
                        .expect("enqueue");
                    timed += start.elapsed();
                    bench.remove(&accepted(&results));
                }
                timed
            })
        });
    }
    g.finish();
    assert_eq!(bench.depth(), 0);

    let mut g = c.benchmark_group("queue_items");
    let loaded = bench.enqueue(4 * LOAD);
    g.throughput(Throughput::Elements(LOAD as u64));
    g.bench_function(BenchmarkId::from_parameter(LOAD), |b| {
        b.iter(|| {
            let items = bench
                .rt
                .block_on(bench.store.queue_items(QUEUE, 0, LOAD))
                .expect("load");
            assert_eq!(items.len(), LOAD);
            black_box(items)
        })
    });
    g.finish();
    bench.remove(&loaded);

    let mut g = c.benchmark_group("queue_remove");
    for n in [64usize, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let ids = bench.enqueue(n);
                    let start = Instant::now();
                    bench
                        .rt
                        .block_on(bench.store.queue_remove(&ids))
                        .expect("remove");
                    timed += start.elapsed();
                }
                timed
            })
        });
    }
    g.finish();
    assert_eq!(bench.depth(), 0);

    let mut g = c.benchmark_group("queue_commit");
    for n in [8usize, 64, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        // What the previous commit added is acknowledged by the next one.
        let mut acked = bench.enqueue(n);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let add = bench.items.batch(n);
                    let start = Instant::now();
                    let results = bench
                        .rt
                        .block_on(bench.store.queue_commit(&add, &acked))
                        .expect("commit");
                    timed += start.elapsed();
                    acked = accepted(&results);
                }
                timed
            })
        });
        bench.remove(&acked);
    }
    g.finish();
    assert_eq!(bench.depth(), 0);
}

criterion_group! {
    name = benches;
    config = config();
    targets = queue
}
criterion_main!(benches);
