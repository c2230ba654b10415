//! The pieces under every order, one at a time: a shard applying the ops of
//! an order's life (hold, reserve, ship, release), and a frame encoded and
//! decoded both ways (a one-line submit and its routed answer).
//!
//! Run: `cargo bench --bench core_ops`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use omniroute::core::index::AvailabilityIndex;
use omniroute::core::ops::{apply_stock_op, StockOp};
use omniroute::core::stock::{HoldItem, StockShard};
use omniroute_protocol::{
    check_frame, split_frame, Allocation, Decision, Method, Order, Request, Response,
};
use smallvec::smallvec;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODES: usize = 60;
const SKUS: u32 = 10_000;
/// Orders per iteration.
const ORDERS: u64 = 4096;

fn shard() -> StockShard {
    let index = Arc::new(AvailabilityIndex::new(NODES, SKUS as usize + 1));
    for sku in 0..SKUS {
        index.intern(&format!("S-{sku}")).unwrap();
    }
    let mut shard = StockShard::new(0, 1, index);
    for sku in 0..SKUS {
        for node in 0..NODES {
            shard.set(sku, node as u16, 1_000_000, None);
        }
    }
    shard
}

fn shard_apply(c: &mut Criterion) {
    let mut shard = shard();
    let mut group = c.benchmark_group("shard_apply");
    group.throughput(Throughput::Elements(ORDERS));
    let mut next_order = 0u64;
    let mut bumped = Vec::new();
    // One line each: held at the first of three candidates, reserved, half
    // shipped, the rest released; the shard ends each iteration as it began
    // but for on_hand.
    group.bench_function("hold_reserve_ship_release", |b| {
        b.iter(|| {
            let first = next_order;
            let items: Vec<HoldItem> = (0..ORDERS)
                .map(|i| HoldItem {
                    order: first + i,
                    line: 0,
                    sku: ((first + i) * 7919 % u64::from(SKUS)) as u32,
                    qty: 2,
                    candidates: smallvec![(i % NODES as u64) as u16, 1, 2],
                    max_parts: 1,
                    partial: false,
                })
                .collect();
            let outcomes = shard.hold(&items);
            assert_eq!(outcomes.len(), items.len());
            for item in &items {
                let node = item.candidates[0];
                let (order, sku) = (item.order, item.sku);
                apply_stock_op(
                    &mut shard,
                    StockOp::Reserve {
                        order,
                        sku,
                        node,
                        qty: 2,
                    },
                    &mut bumped,
                )
                .unwrap();
                apply_stock_op(
                    &mut shard,
                    StockOp::Ship {
                        order,
                        sku,
                        node,
                        qty: 1,
                    },
                    &mut bumped,
                )
                .unwrap();
                apply_stock_op(&mut shard, StockOp::ReleaseOrder(order), &mut bumped).unwrap();
            }
            next_order += ORDERS;
            assert!(bumped.is_empty());
        })
    });
    group.finish();
}

fn submit() -> Request {
    Request::Submit(Order {
        channel: "web".into(),
        client_order_id: "lt-1763860000000000-123456".into(),
        lat: 52.52,
        lon: 13.40,
        market: None,
        method: Method::Ship,
        hold_ttl_ms: Some(900_000),
        lines: vec![("SKU-1234".into(), 2)],
    })
}

fn routed() -> Response {
    Response::Decision(Decision::Routed {
        order_id: 123_456,
        expires_at_ms: 1_763_860_900_000,
        allocations: vec![Allocation {
            line: 0,
            sku: "SKU-1234".into(),
            node: "WH-DE-HAM".into(),
            qty: 2,
        }],
        short: Vec::new(),
    })
}

fn frame_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_codec");
    group.throughput(Throughput::Elements(ORDERS));
    let request = submit();
    let response = routed();
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    for id in 0..ORDERS {
        request.encode(id, &mut requests);
        response.encode(id, &mut responses);
    }
    group.bench_function("submit_encode", |b| {
        let mut out = Vec::with_capacity(requests.len());
        b.iter(|| {
            out.clear();
            for id in 0..ORDERS {
                request.encode(id, &mut out);
            }
            assert_eq!(out.len(), requests.len());
        })
    });
    group.bench_function("submit_decode", |b| {
        b.iter(|| {
            decode_all(&requests, |kind, payload| {
                Request::decode(kind, payload).unwrap().is_some()
            })
        })
    });
    group.bench_function("routed_encode", |b| {
        let mut out = Vec::with_capacity(responses.len());
        b.iter(|| {
            out.clear();
            for id in 0..ORDERS {
                response.encode(id, &mut out);
            }
            assert_eq!(out.len(), responses.len());
        })
    });
    group.bench_function("routed_decode", |b| {
        b.iter(|| {
            decode_all(&responses, |kind, payload| {
                Response::decode(kind, payload).unwrap().is_some()
            })
        })
    });
    group.finish();
}

/// Splits a buffer of frames and decodes each, as a stream reader does.
fn decode_all(mut bytes: &[u8], decode: impl Fn(u8, &[u8]) -> bool) {
    let mut frames = 0;
    while let Some(length) = check_frame(bytes).unwrap() {
        let (kind, _, payload) = split_frame(&bytes[..length]);
        assert!(decode(kind, payload));
        bytes = &bytes[length..];
        frames += 1;
    }
    assert_eq!(frames, ORDERS);
}

criterion_group!(benches, shard_apply, frame_codec);
criterion_main!(benches);
