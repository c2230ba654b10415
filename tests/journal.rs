//! The journal's file layer on real files with fsync: group commit, torn
//! tails cut, corruption refused with file and offset, segments rotated.

mod common;

use std::sync::atomic::Ordering;
use std::sync::mpsc;

use common::{journal_segments, TempDir};
use omniroute::journal::record::RECORD_HEADER_BYTES;
use omniroute::journal::{
    recover, Durability, Journal, JournalError, DEFAULT_SEGMENT_BYTES, MAX_UNSYNCED_BYTES,
};
use proptest::prelude::*;

fn append_all(journal: &Journal, payloads: impl IntoIterator<Item = Vec<u8>>) -> Vec<u64> {
    let (sender, receiver) = mpsc::channel();
    let mut count = 0;
    for payload in payloads {
        let sender = sender.clone();
        journal
            .append(
                1,
                payload,
                Box::new(move |result| sender.send(result.expect("durable")).unwrap()),
            )
            .unwrap();
        count += 1;
    }
    let mut lsns: Vec<u64> = receiver.iter().take(count).collect();
    lsns.sort_unstable();
    lsns
}

#[test]
fn concurrent_appends_are_group_committed_and_recovered_in_order() {
    // Proves records from 8 threads all become durable with gapless LSNs, in fewer fsyncs
    // than records, and read back with their payloads after a restart.
    let dir = TempDir::new("journal-group");
    let journal = std::sync::Arc::new(
        Journal::start(&dir.0, 1, Durability::Fsync, DEFAULT_SEGMENT_BYTES).unwrap(),
    );
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                append_all(
                    &journal,
                    (0..500u32).map(move |i| format!("t{t}-{i}").into_bytes()),
                )
            })
        })
        .collect();
    let mut lsns: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    lsns.sort_unstable();
    assert_eq!(lsns, (1..=4000).collect::<Vec<_>>());
    let commits = journal.stats.commits.load(Ordering::Relaxed);
    assert!(
        commits < 4000,
        "{commits} commits for 4000 records: no grouping"
    );
    drop(journal);
    let recovered = recover(&dir.0, 0).unwrap();
    assert_eq!(recovered.records.len(), 4000);
    assert_eq!(recovered.next_lsn, 4001);
    assert!(recovered.torn_tail.is_none());
    assert!(recovered
        .records
        .windows(2)
        .all(|w| w[1].lsn == w[0].lsn + 1));
    assert_eq!(recover(&dir.0, 3990).unwrap().records.len(), 10);
}

#[test]
fn a_torn_tail_is_erased_and_appending_resumes() {
    // Proves a record cut short at the end of the journal is erased on disk (zeros, the
    // segment keeping its length), reported with its file and offset, and the next append
    // takes its LSN.
    let dir = TempDir::new("journal-torn");
    let journal = Journal::start(&dir.0, 1, Durability::Fsync, DEFAULT_SEGMENT_BYTES).unwrap();
    append_all(&journal, (0..99u32).map(|i| vec![i as u8; 40]));
    append_all(&journal, [vec![0xAB; 3000]]);
    journal.shutdown();
    // The last record's last sector never reached the disk: it is still the
    // prepared segment's zeros. (Zeros inside a sector that holds data are
    // not a cut write: a sector is written whole or not at all.)
    let segment = journal_segments(&dir.0).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let length = bytes.len();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    let sector = omniroute::journal::record::TORN_WRITE_SECTOR_BYTES;
    bytes[(end - 1) / sector * sector..end].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    let recovered = recover(&dir.0, 0).unwrap();
    assert_eq!(recovered.records.len(), 99);
    let torn = recovered.torn_tail.expect("tail reported");
    assert_eq!(torn.path, segment);
    assert_eq!(torn.offset, (end - (3000 + RECORD_HEADER_BYTES)) as u64);
    let after = std::fs::read(&segment).unwrap();
    assert_eq!(after.len(), length, "the segment keeps its prepared length");
    assert!(after[torn.offset as usize..].iter().all(|b| *b == 0));
    let journal = Journal::start(
        &dir.0,
        recovered.next_lsn,
        Durability::Fsync,
        DEFAULT_SEGMENT_BYTES,
    )
    .unwrap();
    assert_eq!(append_all(&journal, [b"after".to_vec()]), vec![100]);
    journal.shutdown();
    let again = recover(&dir.0, 98).unwrap();
    assert_eq!(
        again.records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
        vec![99, 100]
    );
    assert_eq!(again.records[1].payload, b"after");
}

#[test]
fn a_flipped_byte_before_the_tail_refuses_to_start() {
    // Proves damage in the middle of the journal is an error naming the file and the offset
    // of the damaged record, and nothing is cut.
    let dir = TempDir::new("journal-corrupt");
    let journal = Journal::start(&dir.0, 1, Durability::Fsync, DEFAULT_SEGMENT_BYTES).unwrap();
    append_all(&journal, (0..10u32).map(|_| vec![7u8; 100]));
    append_all(&journal, (0..10u32).map(|_| vec![7u8; 100]));
    journal.shutdown();
    // The first record of the first segment: records follow it, in this
    // segment or the next.
    let segment = journal_segments(&dir.0).remove(0);
    let mut bytes = std::fs::read(&segment).unwrap();
    let first_record = omniroute::journal::segment_header::SEGMENT_HEADER_BYTES;
    bytes[first_record + 30] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    match recover(&dir.0, 0) {
        Err(JournalError::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset), (segment.clone(), first_record as u64));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let message = recover(&dir.0, 0).unwrap_err().to_string();
    assert!(
        message.contains("corrupt at byte") && message.contains(".wal"),
        "{message}"
    );
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing was cut");
}

#[test]
fn a_segment_cut_shorter_than_it_was_prepared_is_refused() {
    // Proves a last segment cut anywhere (at the end of a record, inside one, in its zeros)
    // is refused naming the file and its prepared length, instead of read as a clean end or
    // a torn tail that would lose answered records; and that the remedy the message gives,
    // the length given back as zeros, starts again with the records before the cut.
    let dir = TempDir::new("journal-cut");
    let journal = Journal::start(&dir.0, 1, Durability::Fsync, DEFAULT_SEGMENT_BYTES).unwrap();
    append_all(&journal, (0..50u32).map(|i| vec![i as u8 + 1; 60]));
    journal.shutdown();
    let segment = journal_segments(&dir.0).pop().unwrap();
    let whole = std::fs::read(&segment).unwrap();
    let scan = omniroute::journal::scan_segment(&whole, None);
    let records_end = scan.records.last().unwrap().payload.end;
    let record_40 = scan.records[40].offset;
    for cut in [record_40, record_40 + 30, records_end, records_end + 4096] {
        std::fs::write(&segment, &whole[..cut]).unwrap();
        match recover(&dir.0, 0) {
            Err(e @ JournalError::Cut { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(".wal") && message.contains("truncate -s"),
                    "{message}"
                );
            }
            other => panic!("cut at {cut}: expected a refusal, got {other:?}"),
        }
    }
    let mut given_back = whole[..record_40].to_vec();
    given_back.resize(whole.len(), 0);
    std::fs::write(&segment, &given_back).unwrap();
    assert_eq!(recover(&dir.0, 0).unwrap().records.len(), 40);
}

#[test]
fn segments_rotate_and_recover_across_files() {
    // Proves small segments roll over to new files and recovery reads them as one sequence.
    let dir = TempDir::new("journal-rotate");
    let journal = Journal::start(&dir.0, 1, Durability::None, 512).unwrap();
    for chunk in 0..10u32 {
        append_all(
            &journal,
            (0..20u32).map(move |i| format!("{chunk}-{i}").into_bytes()),
        );
    }
    journal.shutdown();
    let files = journal_segments(&dir.0).len();
    assert!(files > 3, "{files} segment files");
    let recovered = recover(&dir.0, 0).unwrap();
    assert_eq!(recovered.records.len(), 200);
    assert_eq!(recovered.records[199].payload, b"9-19");
}

#[test]
fn a_missing_last_segment_is_refused_not_taken_for_the_end() {
    // Proves the segment before the last is sealed at rotation, so removing the last
    // segment refuses recovery, naming the missing file, instead of starting without it.
    let dir = TempDir::new("journal-sealed");
    let journal = Journal::start(&dir.0, 1, Durability::Fsync, 512).unwrap();
    for chunk in 0..4u32 {
        append_all(
            &journal,
            (0..20u32).map(move |i| format!("{chunk}-{i}").into_bytes()),
        );
    }
    journal.shutdown();
    let segments = journal_segments(&dir.0);
    assert!(segments.len() > 2, "{} segments", segments.len());
    let last = segments.last().unwrap().clone();
    std::fs::remove_file(&last).unwrap();
    let refused = recover(&dir.0, 0).expect_err("a journal missing its last segment is refused");
    let message = refused.to_string();
    let name = last.file_name().unwrap().to_str().unwrap();
    assert!(
        message.contains(name) && message.contains("missing"),
        "{message}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn the_record_scanner_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), expected in proptest::option::of(any::<u64>())) {
        // Proves any bytes scan to records and an end, never a panic.
        let scan = omniroute::journal::record::scan(&bytes, expected);
        for found in &scan.records {
            prop_assert!(found.payload.end <= bytes.len());
        }
    }
}

#[test]
fn unvouched_demand_leaves_the_journal_quiet_and_is_still_recovered() {
    // Proves demand records (no answer waits on them) do not make the journal
    // look busy to a rejection that waits for durability, while a state
    // record does; and that both, written with and without an fsync of their
    // own, come back after a close, in order.
    let dir = TempDir::new("journal-unvouched");
    let journal = Journal::start(&dir.0, 1, Durability::Fsync, DEFAULT_SEGMENT_BYTES).unwrap();
    let (sender, receiver) = mpsc::channel();
    {
        let _paused = journal.pause();
        let slot = journal.try_reserve_unvouched().expect("room");
        journal
            .append_in(slot, 2, b"demand-1".to_vec(), Box::new(|_| {}))
            .unwrap();
        assert!(journal.quiet(), "queued demand made the journal busy");
        journal
            .append(
                1,
                b"state".to_vec(),
                Box::new(move |r| sender.send(r.expect("durable")).unwrap()),
            )
            .unwrap();
        assert!(
            !journal.quiet(),
            "a queued state record left the journal quiet"
        );
    }
    receiver.recv().unwrap();
    assert!(
        journal.quiet(),
        "the state record is durable; nothing vouched is left"
    );
    let slot = journal.try_reserve_unvouched().expect("room");
    journal
        .append_in(slot, 2, b"demand-2".to_vec(), Box::new(|_| {}))
        .unwrap();
    journal.close();
    let payloads: Vec<Vec<u8>> = recover(&dir.0, 0)
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(
        payloads,
        vec![
            b"demand-1".to_vec(),
            b"state".to_vec(),
            b"demand-2".to_vec()
        ]
    );
}

#[test]
fn unvouched_demand_is_fsynced_once_it_passes_its_bound() {
    // Proves a long run of unvouched records (a sold-out SKU's demand) is
    // fsynced about every MAX_UNSYNCED_BYTES rather than left for the next
    // vouched commit's fsync to flush all at once, and that a run below the
    // bound costs no fsync.
    let dir = TempDir::new("journal-unsynced-bound");
    // A new directory's first segment is a plain file, left (with a sync)
    // as soon as the first prepared spare is ready; a reopened one is not.
    // Segments of 4 MiB: room for the 1 MiB written, and a spare quick to zero.
    let segment_bytes = 4 << 20;
    let first = Journal::start(&dir.0, 1, Durability::Fsync, segment_bytes).unwrap();
    append_all(&first, [b"state".to_vec()]);
    first.shutdown();
    let journal = Journal::start(&dir.0, 2, Durability::Fsync, segment_bytes).unwrap();
    let append_demand = |bytes: usize| {
        let (sender, receiver) = mpsc::channel();
        let slot = journal.try_reserve_unvouched().expect("room");
        journal
            .append_in(
                slot,
                2,
                vec![7; bytes],
                Box::new(move |r| sender.send(r.expect("written")).unwrap()),
            )
            .unwrap();
        receiver.recv().unwrap();
    };
    let small = 4096;
    append_demand(small);
    assert_eq!(journal.stats.fsyncs.load(Ordering::Relaxed), 0);
    let record = (MAX_UNSYNCED_BYTES / 4) as usize;
    for _ in 0..16 {
        append_demand(record);
    }
    let fsyncs = journal.stats.fsyncs.load(Ordering::Relaxed);
    assert!(
        (3..=5).contains(&fsyncs),
        "{fsyncs} fsyncs for four times MAX_UNSYNCED_BYTES of demand"
    );
    journal.close();
    assert_eq!(recover(&dir.0, 0).unwrap().records.len(), 18);
}
