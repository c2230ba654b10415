use super::*;

/// A payload of `bytes` ASCII bytes (none zero) naming `lsn`.
fn payload(lsn: u64, bytes: usize) -> Vec<u8> {
    format!("record {lsn} ")
        .bytes()
        .cycle()
        .take(bytes)
        .collect()
}

/// `count` records from LSN 1, of sizes that put headers across sector
/// boundaries and records over several sectors.
fn segment(count: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for lsn in 1..=count {
        encode(
            7,
            lsn,
            &payload(lsn, 100 + (lsn as usize * 389) % 1300),
            &mut bytes,
        );
    }
    bytes
}

fn offsets(bytes: &[u8]) -> Vec<usize> {
    scan(bytes, Some(1))
        .records
        .iter()
        .map(|r| r.offset)
        .collect()
}

/// A prepared segment holding `written` and zeros to a length past it.
fn prepared(written: &[u8], length: usize) -> Vec<u8> {
    let mut bytes = written.to_vec();
    bytes.resize(length, 0);
    bytes
}

fn assert_corrupt_at(end: End, at: usize, what: &str) {
    match end {
        End::Corrupt { offset, .. } => assert_eq!(offset, at, "{what}"),
        other => panic!("{what}: {other:?}, not corrupt at {at}"),
    }
}

#[test]
fn whole_records_scan_clean() {
    // Proves encode and scan agree on every field and the payload ranges.
    let bytes = segment(3);
    let scan = scan(&bytes, Some(1));
    assert_eq!(scan.end, End::Clean);
    assert_eq!(
        scan.records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        &bytes[scan.records[1].payload.clone()],
        &payload(2, 100 + 778)[..]
    );
    assert_eq!(scan.records[1].kind, 7);
}

#[test]
fn the_test_records_cross_sector_boundaries_and_hold_no_zero_piece() {
    // Proves the segment the other tests damage has what they rely on: a
    // header across a sector boundary, records over several sectors, and
    // no sector piece of any record that is all zeros when written whole.
    let bytes = segment(8);
    let offsets = offsets(&bytes);
    assert!(offsets
        .iter()
        .any(|&o| o / TORN_WRITE_SECTOR_BYTES
            != (o + RECORD_HEADER_BYTES - 1) / TORN_WRITE_SECTOR_BYTES));
    let ends: Vec<usize> = offsets
        .iter()
        .skip(1)
        .copied()
        .chain([bytes.len()])
        .collect();
    for (&start, &end) in offsets.iter().zip(&ends) {
        for piece in sector_pieces(start..end) {
            assert!(bytes[piece].iter().any(|b| *b != 0));
        }
        for piece in sector_pieces(start..start + RECORD_HEADER_BYTES) {
            assert!(bytes[piece].iter().any(|b| *b != 0));
        }
    }
}

#[test]
fn every_cut_of_the_last_record_is_a_torn_tail() {
    // Proves a file that ends at any byte inside its last record reads as a
    // torn tail at that record, with every record before it.
    let bytes = segment(8);
    let last = *offsets(&bytes).last().unwrap();
    for cut in last + 1..bytes.len() {
        let scan = scan(&bytes[..cut], Some(1));
        assert_eq!(scan.end, End::Torn { offset: last }, "cut at {cut}");
        assert_eq!(scan.records.len(), 7, "cut at {cut}");
    }
}

#[test]
fn every_unwritten_sector_of_the_last_record_in_a_prepared_segment_is_a_torn_tail() {
    // Proves that in a zero-filled segment, the last record with any of its
    // sectors never written (still zeros: the write stopped at a sector
    // boundary, or one sector of it did not reach the disk) is a torn tail.
    let bytes = segment(8);
    let last = *offsets(&bytes).last().unwrap();
    let length = bytes.len() + 4096;
    let boundaries = (last + 1..bytes.len()).filter(|b| b % TORN_WRITE_SECTOR_BYTES == 0);
    for boundary in boundaries {
        let cut = prepared(&bytes[..boundary], length);
        assert_eq!(
            scan(&cut, Some(1)).end,
            End::Torn { offset: last },
            "cut at {boundary}"
        );
        let mut hole = prepared(&bytes, length);
        let sector_end = (boundary + TORN_WRITE_SECTOR_BYTES).min(bytes.len());
        hole[boundary..sector_end].fill(0);
        assert_eq!(
            scan(&hole, Some(1)).end,
            End::Torn { offset: last },
            "hole at {boundary}"
        );
    }
    // A header across a boundary whose second sector never made it.
    let straddles = offsets(&bytes)
        .into_iter()
        .find(|o| {
            o / TORN_WRITE_SECTOR_BYTES != (o + RECORD_HEADER_BYTES - 1) / TORN_WRITE_SECTOR_BYTES
        })
        .unwrap();
    let boundary = (straddles / TORN_WRITE_SECTOR_BYTES + 1) * TORN_WRITE_SECTOR_BYTES;
    let cut = prepared(&bytes[..boundary], length);
    assert_eq!(scan(&cut, Some(1)).end, End::Torn { offset: straddles });
}

#[test]
fn zeros_after_whole_records_are_the_unwritten_rest() {
    // Proves a prepared segment's zero tail is a clean end, with every record before it.
    let bytes = segment(3);
    let scan = scan(&prepared(&bytes, 1 << 16), Some(1));
    assert_eq!(scan.end, End::Clean);
    assert_eq!(scan.records.len(), 3);
    assert_eq!(scan.records[2].payload.end, bytes.len());
}

#[test]
fn a_bit_flipped_anywhere_in_the_last_record_is_corruption_not_a_torn_tail() {
    // Proves a fully written last record with one flipped bit, in any field
    // of its header or in its payload, refuses at that record instead of
    // being cut as torn: with the file ending there, and in a prepared
    // segment.
    let bytes = segment(8);
    let last = *offsets(&bytes).last().unwrap();
    for bit in last * 8..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        assert_corrupt_at(scan(&damaged, Some(1)).end, last, &format!("bit {bit}"));
        let zeros = prepared(&damaged, bytes.len() + 4096);
        assert_corrupt_at(
            scan(&zeros, Some(1)).end,
            last,
            &format!("bit {bit}, prepared"),
        );
    }
}

#[test]
fn a_bit_flipped_anywhere_in_an_earlier_record_is_corruption() {
    // Proves one flipped bit at every bit position of every record but the
    // last stops the scan at that record as corruption.
    let bytes = segment(6);
    let offsets = offsets(&bytes);
    for (i, pair) in offsets.windows(2).enumerate() {
        for bit in pair[0] * 8..pair[1] * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let scan = scan(&damaged, Some(1));
            assert_corrupt_at(scan.end, pair[0], &format!("bit {bit}"));
            assert_eq!(scan.records.len(), i, "bit {bit}");
        }
    }
}

#[test]
fn the_high_bit_of_a_length_is_found_where_it_is() {
    // Proves the case: a length made huge by one bit, in the last
    // segment's middle record, is corruption at that record (the old format
    // took it as a torn tail and cut every record from there on).
    let bytes = segment(6);
    let third = offsets(&bytes)[2];
    let mut damaged = bytes.clone();
    damaged[third + 3] ^= 0x80;
    let scan = scan(&damaged, Some(1));
    assert_corrupt_at(scan.end, third, "length bit");
    let mut old = Vec::new();
    for lsn in 1..=6 {
        super::super::record_v2::encode(7, lsn, &payload(lsn, 300), &mut old);
    }
    let old_third = super::super::record_v2::scan(&old, None).records[2].offset;
    old[old_third + 3] ^= 0x80;
    assert_eq!(
        super::super::record_v2::scan(&old, None).end,
        End::Torn { offset: old_third },
        "the old format cut it silently"
    );
}

#[test]
fn data_after_zeros_is_corruption() {
    // Proves that garbage, or a valid record, after a run of zeros past the
    // last record is not a clean end nor a torn tail: something was written
    // there that a scan cannot reach.
    let bytes = segment(3);
    let end = bytes.len();
    let mut garbage = prepared(&bytes, end + 8192);
    for (i, b) in garbage[end + 3000..end + 3100].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) | 1;
    }
    assert_corrupt_at(scan(&garbage, Some(1)).end, end, "garbage after zeros");
    let mut record = prepared(&bytes, end + 8192);
    let mut later = Vec::new();
    encode(7, 9, b"later", &mut later);
    record[end + 5000..end + 5000 + later.len()].copy_from_slice(&later);
    assert_corrupt_at(scan(&record, Some(1)).end, end, "a record after zeros");
}

#[test]
fn a_torn_record_with_a_valid_header_after_it_is_corruption() {
    // Proves a record with a zeroed sector is cut only when nothing valid
    // follows it: with a whole record after it, it is damage.
    let bytes = segment(8);
    let offsets = offsets(&bytes);
    let (start, next) = (offsets[5], offsets[6]);
    let boundary = (start + RECORD_HEADER_BYTES).next_multiple_of(TORN_WRITE_SECTOR_BYTES);
    assert!(boundary < next, "the record spans a boundary");
    let mut damaged = bytes.clone();
    damaged[boundary..next.min(boundary + TORN_WRITE_SECTOR_BYTES)].fill(0);
    assert_corrupt_at(
        scan(&damaged, Some(1)).end,
        start,
        "zeroed sector mid-journal",
    );
}

#[test]
fn a_wrong_lsn_is_corruption() {
    // Proves a whole record whose LSN is not the next one refuses, also last.
    let bytes = segment(3);
    assert_corrupt_at(scan(&bytes, Some(5)).end, 0, "first LSN");
    let mut skipped = segment(2);
    encode(7, 4, &payload(4, 200), &mut skipped);
    assert_corrupt_at(
        scan(&skipped, Some(1)).end,
        offsets(&bytes)[2],
        "LSN 3 missing",
    );
}

#[test]
fn the_refusal_names_what_is_wrong() {
    // Proves the reason of a refusal says which check failed and why it is
    // not taken for a torn write.
    let bytes = segment(3);
    let last = offsets(&bytes)[2];
    let mut damaged = bytes.clone();
    damaged[last + RECORD_HEADER_BYTES + 10] ^= 1;
    let End::Corrupt { reason, .. } = scan(&damaged, Some(1)).end else {
        panic!("not corrupt")
    };
    assert!(reason.contains("payload checksum of record 3"), "{reason}");
    assert!(reason.contains("written whole"), "{reason}");
}

#[test]
fn a_seal_ends_a_segment_and_names_the_next_lsn() {
    // Proves a seal after the records reads as Sealed with the LSN it carries (no record of
    // its own), and that anything but zeros after a seal is damage.
    let mut bytes = Vec::new();
    for lsn in 1..=3 {
        encode(7, lsn, b"record", &mut bytes);
    }
    encode(KIND_SEAL, 4, &[], &mut bytes);
    let sealed = scan(&bytes, Some(1));
    assert_eq!(sealed.end, End::Sealed { next_lsn: 4 });
    assert_eq!(sealed.records.len(), 3, "the seal is not a record");
    let mut prepared = bytes.clone();
    prepared.resize(bytes.len() + 4096, 0);
    assert_eq!(scan(&prepared, Some(1)).end, End::Sealed { next_lsn: 4 });
    let mut after = bytes.clone();
    encode(7, 4, b"late", &mut after);
    assert!(matches!(scan(&after, Some(1)).end, End::Corrupt { .. }));
}
