//! The decoders recovery trusts with bytes from disk: a journal record's
//! payload and every kind of snapshot. Arbitrary and damaged bytes must
//! give an error, never a panic, and never a state that breaks invariants.

mod common;

use std::sync::Arc;

use omniroute::core::index::AvailabilityIndex;
use omniroute::engine::sequencer::{SharedSeen, Txn};
use omniroute::engine::{Engine, Image};
use omniroute::store;
use proptest::prelude::*;

/// Real snapshot files (name, bytes) and a real journal payload, from an
/// engine that routed, confirmed, cancelled and re-stocked.
/// (snapshot files as (name, bytes), a txn payload)
type Samples = (Vec<(String, Vec<u8>)>, Vec<u8>);

fn samples() -> &'static Samples {
    static SAMPLES: std::sync::OnceLock<Samples> = std::sync::OnceLock::new();
    SAMPLES.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let config = common::config(&format!(
                "{}{}",
                common::channel("web", &["nearest"]),
                common::stock(&[("SKU-1", "WH-N", 30), ("SKU-2", "WH-S", 30)])
            ));
            let (engine, _) = common::engine(&config, None).await;
            for i in 0..12 {
                engine
                    .submit(common::order(
                        "web",
                        &format!("o-{i}"),
                        &[("SKU-1", 1), ("SKU-2", 2)],
                    ))
                    .await;
            }
            let (images, books) = common::snapshot_in_memory(&engine).await;
            let mut files: Vec<(String, Vec<u8>)> = images
                .iter()
                .filter_map(|(lsn, image)| {
                    let name = match image {
                        Image::Catalog(_) => "catalog".to_string(),
                        Image::Shard(s, _) => format!("shard-{s}"),
                        Image::Node(n, _) => format!("node-{n}"),
                        Image::Feed(_) => "feed".to_string(),
                        Image::Router(_) => return None,
                    };
                    Some((
                        name,
                        store::snapshot_bytes(*lsn, &store::encode_image(image)?),
                    ))
                })
                .collect();
            for book in &books {
                let body = store::book_body(book.chunks.iter().map(|(n, b)| (*n, &b[..])));
                files.push((
                    format!("router-{}", book.router),
                    store::book_snapshot_bytes(book.lsn, &body),
                ));
            }
            let orders: Vec<_> = books.iter().flat_map(|book| book.orders()).collect();
            let txn = Txn {
                skus: vec![(0, "SKU-1".into())],
                orders,
                ..Txn::default()
            };
            Engine::shutdown(&engine);
            (files, txn.encode())
        })
    })
}

fn index() -> Arc<AvailabilityIndex> {
    let index = Arc::new(AvailabilityIndex::new(5, 16));
    for name in ["SKU-1", "SKU-2"] {
        index.intern(name).unwrap();
    }
    index
}

#[test]
fn the_samples_decode() {
    // Proves the fuzz seeds are valid, so that the damage below starts from real data.
    let (files, txn) = samples();
    assert!(files.len() > 4);
    for (name, bytes) in files {
        store::verify_snapshot_bytes(name, bytes, index())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(!Txn::decode(txn).unwrap().orders.is_empty());
}

#[test]
fn a_damaged_payload_is_refused_with_what_failed() {
    // Proves the refusal names what the check found (in release builds too), not rkyv's
    // placeholder that asks the operator for a debug build.
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&samples().1);
    let end = aligned.len();
    aligned[end - 20] ^= 0xff;
    let Err(error) = Txn::validate(&aligned) else {
        panic!("a damaged payload validated");
    };
    let message = error.to_string();
    assert!(!message.contains("without error information"), "{message}");
    assert!(!message.is_empty());
}

#[test]
fn a_router_snapshot_from_before_books_still_loads() {
    // Proves a router snapshot written as one archive (before books were streamed in chunks)
    // is still read, and that a book's chunk that claims more orders than it holds is refused.
    let orders: Vec<_> = samples_orders();
    assert!(!orders.is_empty());
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(&orders).unwrap();
    let old = store::snapshot_bytes(7, &body);
    assert_eq!(
        store::verify_snapshot_bytes("router-0", &old, index()).unwrap(),
        7
    );

    let chunk = rkyv::to_bytes::<rkyv::rancor::Error>(&orders).unwrap();
    let claimed = orders.len() as u32 + 1;
    let book = store::book_snapshot_bytes(7, &store::book_body([(claimed, &chunk[..])]));
    let refused = store::verify_snapshot_bytes("router-0", &book, index()).unwrap_err();
    assert!(
        matches!(refused, store::SnapshotError::ChunkCount { .. }),
        "{refused}"
    );
}

/// Body bits flipped per snapshot file, at offsets drawn from a fixed seed.
const BODY_FLIPS_PER_FILE: usize = 512;

/// `bytes` with one bit flipped.
fn flipped(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut damaged = bytes.to_vec();
    damaged[bit / 8] ^= 1 << (bit % 8);
    damaged
}

/// Whether both checks refuse `bytes` (a panic fails the test).
fn refused(name: &str, bytes: &[u8]) -> bool {
    store::parse_snapshot(bytes).is_err()
        && store::verify_snapshot_bytes(name, bytes, index()).is_err()
}

#[test]
fn every_header_bit_and_seeded_body_bits_of_every_snapshot_are_refused() {
    // Proves that a real snapshot of every kind (catalog, shards, nodes, feed, routers' books)
    // with any one bit of its 32-byte header flipped, cut at any length inside the header or
    // at drawn lengths of its body, grown by a byte, or with one of 512 seeded body bits
    // flipped, is refused by the frame check and by the full check, never accepted and never
    // a panic.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (files, _) = samples();
    let kinds: std::collections::BTreeSet<&str> = files
        .iter()
        .map(|(name, _)| name.split('-').next().unwrap())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["catalog", "feed", "node", "router", "shard"]
    );
    for (name, bytes) in files {
        assert!(bytes.len() > 32, "{name}: {} bytes", bytes.len());
        assert!(store::parse_snapshot(bytes).is_ok(), "{name} undamaged");
        for bit in 0..32 * 8 {
            assert!(
                refused(name, &flipped(bytes, bit)),
                "{name}: header bit {bit} flipped was accepted"
            );
        }
        for length in (0..32).chain((0..8).map(|_| rng.random_range(32..bytes.len()))) {
            assert!(
                refused(name, &bytes[..length]),
                "{name}: cut at {length} was accepted"
            );
        }
        let mut grown = bytes.clone();
        grown.push(0);
        assert!(refused(name, &grown), "{name}: a byte more was accepted");
        for _ in 0..BODY_FLIPS_PER_FILE {
            let bit = rng.random_range(32 * 8..bytes.len() * 8);
            let damaged = flipped(bytes, bit);
            assert!(
                matches!(
                    store::parse_snapshot(&damaged),
                    Err(store::SnapshotError::Checksum)
                ),
                "{name}: body bit {bit} flipped passed the frame check"
            );
            assert!(refused(name, &damaged), "{name}: body bit {bit}");
        }
    }
}

/// The orders in the sample routers' books.
fn samples_orders() -> Vec<omniroute::core::order::OrderRecord> {
    Txn::decode(&samples().1).unwrap().orders
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn a_txn_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        // Proves arbitrary payload bytes decode to an error or a value, never a panic.
        let _ = Txn::decode(&bytes);
    }

    #[test]
    fn a_txn_decoder_never_panics_on_damaged_records(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        // Proves a real payload with bytes changed or cut off decodes to an error or a value, never a panic.
        let mut bytes = samples().1.clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let keep = cut.index(bytes.len() + 1);
        let _ = Txn::decode(&bytes[..keep]);
        let _ = Txn::decode(&bytes);
    }

    #[test]
    fn the_replays_validator_agrees_with_rkyvs(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6)) {
        // Proves the replay's validator (its shared-pointer list kept from payload to payload)
        // accepts exactly the damaged payloads rkyv's own validator accepts, also with the list
        // left over from another payload.
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&samples().1);
        for (at, value) in flips {
            let i = at.index(aligned.len());
            aligned[i] = value;
        }
        let mut seen = SharedSeen::default();
        let mut first = rkyv::util::AlignedVec::<16>::new();
        first.extend_from_slice(&samples().1);
        prop_assert!(Txn::validate_with(&first, &mut seen).is_ok());
        let ours = Txn::validate_with(&aligned, &mut seen).map(|t| t.orders.len());
        let rkyvs = Txn::validate(&aligned).map(|t| t.orders.len());
        prop_assert_eq!(ours.is_ok(), rkyvs.is_ok(), "ours {:?}, rkyv's {:?}", ours, rkyvs);
        prop_assert_eq!(ours.ok(), rkyvs.ok());
    }

    #[test]
    fn the_snapshot_loader_never_panics_on_damage(which in any::<prop::sample::Index>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), fix_checksum in any::<bool>()) {
        // Proves a damaged snapshot of any kind is refused with an error (or, if the damage
        // left it consistent, loads), never a panic; with the checksum left alone every
        // change is caught.
        let files = &samples().0;
        let (name, original) = &files[which.index(files.len())];
        let mut bytes = original.clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if fix_checksum && bytes.len() >= 32 {
            // A tamper (or a bug) that keeps the frame valid: only the archive checks remain.
            let body = bytes[32..].to_vec();
            let lsn = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
            bytes = if name.starts_with("router-") {
                store::book_snapshot_bytes(lsn, &body)
            } else {
                store::snapshot_bytes(lsn, &body)
            };
        }
        let result = store::verify_snapshot_bytes(name, &bytes, index());
        if !fix_checksum && bytes != *original {
            prop_assert!(result.is_err(), "{} changed but loaded", name);
        }
    }
}
