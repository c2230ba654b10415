//! What durability costs, piece by piece: journal appends through group
//! commit (fsync and none, on real files), and a shard snapshot encoded,
//! written and loaded back.
//!
//! Run: `cargo bench --bench durability`.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use omniroute::core::index::AvailabilityIndex;
use omniroute::core::stock::StockShard;
use omniroute::engine::Image;
use omniroute::journal::{Durability, Journal, DEFAULT_SEGMENT_BYTES};
use omniroute::store;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records appended per iteration, from as many threads as routers.
const RECORDS: usize = 4096;
const APPENDERS: usize = 4;
/// About the size of a one-line order's journal record.
const PAYLOAD_BYTES: usize = 400;
const NODES: usize = 60;
const SKUS: u32 = 10_000;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("omniroute-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn journal_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal_append");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.measurement_time(Duration::from_secs(5));
    for (name, durability) in [("fsync", Durability::Fsync), ("none", Durability::None)] {
        let dir = temp_dir(&format!("journal-{name}"));
        let journal = Arc::new(Journal::start(&dir, 1, durability, DEFAULT_SEGMENT_BYTES).unwrap());
        group.bench_with_input(BenchmarkId::new("records", name), &journal, |b, journal| {
            b.iter(|| {
                let (done, acks) = mpsc::channel();
                std::thread::scope(|scope| {
                    for _ in 0..APPENDERS {
                        let done = done.clone();
                        scope.spawn(move || {
                            for _ in 0..RECORDS / APPENDERS {
                                let done = done.clone();
                                journal
                                    .append(
                                        1,
                                        vec![7u8; PAYLOAD_BYTES],
                                        Box::new(move |r| done.send(r.is_ok()).unwrap()),
                                    )
                                    .unwrap();
                            }
                        });
                    }
                });
                assert!(acks.iter().take(RECORDS).all(|ok| ok));
            })
        });
        journal.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

fn stocked_shard(index: &Arc<AvailabilityIndex>) -> StockShard {
    let mut shard = StockShard::new(0, 1, index.clone());
    for sku in 0..SKUS {
        for node in 0..NODES {
            shard.set(sku, node as u16, 100, None);
        }
    }
    shard
}

fn snapshot(c: &mut Criterion) {
    let index = Arc::new(AvailabilityIndex::new(NODES, SKUS as usize + 1));
    for sku in 0..SKUS {
        index.intern(&format!("S-{sku}")).unwrap();
    }
    let shard = stocked_shard(&index);
    let cells = u64::from(SKUS) * NODES as u64;
    let mut group = c.benchmark_group("shard_snapshot");
    group.throughput(Throughput::Elements(cells));
    group.sample_size(20);
    let dir = temp_dir("snapshot");
    group.bench_function("image_encode_write", |b| {
        b.iter(|| {
            let image = Image::Shard(0, shard.image());
            store::write_snapshots(&dir, vec![(1, image)]).unwrap();
        })
    });
    let bytes = std::fs::read(store::snapshot_dir(&dir).join("shard-0.snap")).unwrap();
    group.bench_function("verify_load", |b| {
        b.iter(|| store::verify_snapshot_bytes("shard-0", &bytes, index.clone()).unwrap())
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, journal_append, snapshot);
criterion_main!(benches);
