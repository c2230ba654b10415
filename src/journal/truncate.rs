//! Cutting the journal from a record on. A replica whose log diverged
//! from its leader's drops the entries the leader does not have: records
//! no one was answered for (an answer waits for a majority, and the leader
//! that overwrites them has every entry a majority had).
//!
//! The cut is made as recovery erases a torn tail: the records are zeroed,
//! the segment keeps its prepared length. Segments after the one holding
//! the first record cut are deleted, the last first. A crash part way
//! leaves a journal recovery refuses (a seal pointing at a deleted
//! segment, or records after a gap), so the caller records its intent
//! durably before the cut and runs it again, to the end, before it
//! recovers: `truncate_from` finishes whatever an earlier run left.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::segment_header::SEGMENT_HEADER_BYTES;
use super::segments::{check_header, scan_segment, segment_paths, sync_dir};
use super::{io_error, JournalError};
use crate::faults::{self, points};

/// What a cut removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truncated {
    /// Whole segments deleted (every record in them was at or after the cut).
    pub segments_deleted: usize,
    /// Bytes zeroed in the segment that holds the cut.
    pub bytes_zeroed: u64,
}

/// Removes every record with an LSN at or above `lsn` from the journal in
/// `dir`, durably; the next append takes `lsn`. Records below `lsn` must
/// all be there, whole: a cut never hides damage before it. A cut below
/// the oldest segment is refused (those entries went into a snapshot).
pub fn truncate_from(dir: &Path, lsn: u64) -> Result<Truncated, JournalError> {
    let segments = segment_paths(dir)?;
    let Some(keep) = segments.iter().rposition(|(first, _)| *first <= lsn) else {
        return match segments.first() {
            None => Ok(Truncated::default()),
            Some((first, path)) => Err(JournalError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!(
                    "a cut from LSN {lsn} was asked for, but the journal begins at {first}"
                ),
                later_segments: segments.len() - 1,
            }),
        };
    };
    let mut truncated = Truncated::default();
    // The last first: a crash leaves the segments in order, ending early.
    for (_, path) in segments[keep + 1..].iter().rev() {
        faults::io(points::JOURNAL_WRITE, || std::fs::remove_file(path))
            .map_err(|e| io_error(path, e))?;
        truncated.segments_deleted += 1;
    }
    if truncated.segments_deleted > 0 {
        sync_dir(dir)?;
    }
    let (first_lsn, path) = &segments[keep];
    truncated.bytes_zeroed = zero_from_lsn(path, *first_lsn, lsn)?;
    Ok(truncated)
}

/// Zeros the segment at `path` (first record `first_lsn`) from the end of
/// record `lsn - 1` (its header, if none is kept) to its last written byte,
/// fsynced. The seal of a segment that was left goes with it.
fn zero_from_lsn(path: &Path, first_lsn: u64, lsn: u64) -> Result<u64, JournalError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    check_header(&bytes, path, 0)?;
    let scan = scan_segment(&bytes, Some(first_lsn));
    let kept: Vec<_> = scan.records.iter().filter(|r| r.lsn < lsn).collect();
    if (kept.len() as u64) < lsn - first_lsn {
        let offset = kept.last().map_or(SEGMENT_HEADER_BYTES, |r| r.payload.end);
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason: format!(
                "records {}..{lsn} are not whole before a cut from LSN {lsn}",
                first_lsn + kept.len() as u64
            ),
            later_segments: 0,
        });
    }
    let from = kept.last().map_or(SEGMENT_HEADER_BYTES, |r| r.payload.end);
    let written_end = last_nonzero(&bytes).map_or(from, |last| last + 1).max(from);
    if written_end == from {
        return Ok(0);
    }
    let file = faults::io(points::JOURNAL_OPEN, || {
        OpenOptions::new().write(true).open(path)
    })
    .map_err(|e| io_error(path, e))?;
    let zeros = vec![0u8; written_end - from];
    faults::io(points::JOURNAL_WRITE, || {
        file.write_all_at(&zeros, from as u64)
    })
    .map_err(|e| io_error(path, e))?;
    faults::io(points::JOURNAL_FSYNC, || file.sync_data()).map_err(|e| io_error(path, e))?;
    Ok(zeros.len() as u64)
}

/// The offset of the last byte that is not zero. A segment is prepared
/// whole (tens of MiB of zeros after what was written), and a replica cuts
/// its running journal: looked for 16 bytes at a time, not byte by byte.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    const WORD: usize = 16;
    let whole = bytes.len() / WORD * WORD;
    if let Some(at) = bytes[whole..].iter().rposition(|b| *b != 0) {
        return Some(whole + at);
    }
    let word = (bytes[..whole].chunks_exact(WORD))
        .rposition(|w| u128::from_ne_bytes(w.try_into().expect("a word")) != 0)?;
    let start = word * WORD;
    let at = bytes[start..start + WORD].iter().rposition(|b| *b != 0)?;
    Some(start + at)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    #[test]
    fn the_last_nonzero_byte_is_found_wherever_it_is() {
        // Proves the word-at-a-time search agrees with a byte-at-a-time one for a nonzero
        // byte at every offset of a buffer whose length is not a multiple of the word.
        assert_eq!(super::last_nonzero(&[0u8; 100]), None);
        for at in 0..100 {
            let mut bytes = vec![0u8; 100];
            bytes[at] = 7;
            if at > 3 {
                bytes[at - 3] = 1;
            }
            assert_eq!(super::last_nonzero(&bytes), Some(at), "at {at}");
        }
    }

    use super::*;
    use crate::journal::{recover, Durability, Journal};
    use crate::scratch::Scratch;

    /// Small segments: a few dozen records each, so a cut crosses files.
    const SMALL_SEGMENT_BYTES: u64 = 4096;
    const RECORDS: u64 = 300;

    fn payload(lsn: u64, round: u8) -> Vec<u8> {
        format!("record {lsn} of round {round}").into_bytes()
    }

    /// Appends records for `lsns`, each durable before it returns.
    fn append(dir: &Path, lsns: std::ops::Range<u64>, round: u8) {
        let journal = Journal::start(dir, lsns.start, Durability::Fsync, SMALL_SEGMENT_BYTES)
            .expect("a journal");
        for lsn in lsns {
            let (sender, receiver) = mpsc::channel();
            let done = Box::new(move |r| sender.send(r).expect("the test waits"));
            journal
                .append(1, payload(lsn, round), done)
                .expect("queued");
            assert_eq!(receiver.recv().expect("an answer").expect("durable"), lsn);
        }
        journal.shutdown();
    }

    /// The journal holds exactly the records of `model` (LSN 1 first).
    fn assert_holds(dir: &Path, model: &[Vec<u8>]) {
        let recovered = recover(dir, 0).expect("the journal recovers");
        assert!(recovered.torn_tail.is_none(), "{:?}", recovered.torn_tail);
        assert_eq!(recovered.next_lsn, model.len() as u64 + 1);
        let payloads: Vec<&Vec<u8>> = recovered.records.iter().map(|r| &r.payload).collect();
        assert_eq!(payloads, model.iter().collect::<Vec<_>>());
    }

    /// `append`, and the same records pushed on `model`.
    fn append_to(dir: &Path, model: &mut Vec<Vec<u8>>, count: u64, round: u8) {
        let next = model.len() as u64 + 1;
        append(dir, next..next + count, round);
        model.extend((next..next + count).map(|lsn| payload(lsn, round)));
    }

    fn segment_count(dir: &Path) -> usize {
        segment_paths(dir).expect("segments").len()
    }

    #[test]
    fn a_cut_anywhere_leaves_the_records_before_it_and_appends_resume_there() {
        // Proves cuts inside a segment, at a segment's first record and past the end leave
        // exactly the records below the cut, recoverable, and the next append takes its LSN.
        let scratch = Scratch::new("anywhere");
        let mut model = Vec::new();
        append_to(&scratch.0, &mut model, RECORDS, 0);
        let segments = segment_paths(&scratch.0).expect("segments");
        assert!(segments.len() >= 4, "{} segments", segments.len());
        let cuts = [RECORDS - 5, segments[3].0, segments[2].0 + 3, 0];
        for (round, cut) in cuts.into_iter().enumerate() {
            // 0: a cut past the end, which changes nothing.
            let cut = if cut == 0 {
                model.len() as u64 + 1
            } else {
                cut
            };
            truncate_from(&scratch.0, cut).expect("the cut");
            model.truncate(cut as usize - 1);
            assert_holds(&scratch.0, &model);
            append_to(&scratch.0, &mut model, 7, round as u8 + 1);
            assert_holds(&scratch.0, &model);
        }
        assert!(segment_count(&scratch.0) < segments.len());
    }

    #[test]
    fn an_io_error_at_any_call_is_returned_and_a_second_run_finishes_the_cut() {
        // Proves that an injected error at each I/O call of a cut across segments (that call
        // alone failing) is returned, and running the cut again (as the intent makes the caller do) leaves
        // exactly the records before it.
        crate::faults::alone(
            module_path!(),
            "an_io_error_at_any_call_is_returned_and_a_second_run_finishes_the_cut",
            || {
                let scratch = Scratch::new("faults");
                let mut model = Vec::new();
                append_to(&scratch.0, &mut model, RECORDS, 0);
                let pristine = Scratch::new("faults-pristine");
                std::fs::remove_dir(&pristine.0).expect("an empty directory");
                copy_dir(&scratch.0, &pristine.0);
                let cut = segment_paths(&scratch.0).expect("segments")[2].0 + 2;
                model.truncate(cut as usize - 1);
                let mut failed_runs = 0;
                for point in [
                    points::JOURNAL_OPEN,
                    points::JOURNAL_WRITE,
                    points::JOURNAL_FSYNC,
                    points::JOURNAL_DIR_FSYNC,
                ] {
                    for calls_before in 0.. {
                        let _ = std::fs::remove_dir_all(&scratch.0);
                        copy_dir(&pristine.0, &scratch.0);
                        fail::cfg(point, &format!("{calls_before}*off->1*return(EIO)->off"))
                            .expect("a failpoint");
                        let first = truncate_from(&scratch.0, cut);
                        fail::remove(point);
                        if first.is_ok() {
                            // Past the last call of this kind: the cut ran whole.
                            assert_holds(&scratch.0, &model);
                            break;
                        }
                        failed_runs += 1;
                        truncate_from(&scratch.0, cut).expect("the second run");
                        assert_holds(&scratch.0, &model);
                    }
                }
                assert!(failed_runs >= 6, "only {failed_runs} calls failed");
            },
        );
    }

    #[test]
    fn damage_before_the_cut_and_a_cut_below_the_journal_are_refused() {
        // Proves a cut never hides a damaged record below it, and that it refuses an LSN the
        // journal no longer holds.
        let scratch = Scratch::new("refused");
        append(&scratch.0, 1..RECORDS + 1, 0);
        let (first, path) = segment_paths(&scratch.0).expect("segments").remove(2);
        let mut bytes = std::fs::read(&path).expect("a segment");
        let victim = scan_segment(&bytes, Some(first)).records[3].clone();
        bytes[victim.payload.start + 2] ^= 0x10;
        std::fs::write(&path, &bytes).expect("damaged");
        let damaged = truncate_from(&scratch.0, victim.lsn + 2).expect_err("damage before the cut");
        assert!(matches!(damaged, JournalError::Corrupt { .. }), "{damaged}");
        for (_, older) in &segment_paths(&scratch.0).expect("segments")[..2] {
            std::fs::remove_file(older).expect("an older segment removed");
        }
        let below = truncate_from(&scratch.0, first - 1).expect_err("a cut below the journal");
        assert!(below.to_string().contains("begins at"), "{below}");
    }

    /// Queues `work` on `journal` and returns where its answer comes.
    fn queued(
        journal: &Journal,
        work: impl FnOnce(&Journal, crate::journal::Slot, crate::journal::Done),
    ) -> mpsc::Receiver<Result<u64, JournalError>> {
        let (sender, receiver) = mpsc::channel();
        let slot = journal.reserve_blocking();
        work(
            journal,
            slot,
            Box::new(move |r| sender.send(r).expect("the test waits")),
        );
        receiver
    }

    fn group(journal: &Journal, name: &str) -> mpsc::Receiver<Result<u64, JournalError>> {
        let records: Vec<(u8, Vec<u8>)> = (0..5)
            .map(|r| (1, format!("{name}/{r}").into_bytes()))
            .collect();
        queued(journal, |j, slot, done| {
            j.append_group_in(slot, records, done).expect("queued")
        })
    }

    #[test]
    fn a_cut_between_groups_in_a_running_journal_is_made_in_order() {
        // Proves a cut queued between groups removes the tail before the groups after it are
        // written, which take the cut's LSNs, and that no group is split across segments.
        let scratch = Scratch::new("running");
        let journal = Journal::start(&scratch.0, 1, Durability::Fsync, SMALL_SEGMENT_BYTES)
            .expect("a journal");
        let firsts: Vec<u64> = (0..60)
            .map(|g| {
                group(&journal, &format!("old{g}"))
                    .recv()
                    .expect("an answer")
                    .expect("durable")
            })
            .collect();
        assert_eq!(firsts[59], 296);
        let cut_at = firsts[20];
        let cut = queued(&journal, |j, slot, done| {
            j.cut_from_in(slot, cut_at, done).expect("queued")
        });
        let (a, b) = (group(&journal, "new0"), group(&journal, "new1"));
        assert_eq!(cut.recv().expect("an answer").expect("cut"), cut_at);
        assert_eq!(a.recv().expect("an answer").expect("durable"), cut_at);
        assert_eq!(b.recv().expect("an answer").expect("durable"), cut_at + 5);
        journal.shutdown();
        let names: Vec<String> = recover(&scratch.0, 0)
            .expect("recovers")
            .records
            .iter()
            .map(|r| String::from_utf8(r.payload.clone()).expect("text"))
            .collect();
        let expected: Vec<String> = (0..20)
            .map(|g| format!("old{g}"))
            .chain(["new0".into(), "new1".into()])
            .flat_map(|g| (0..5).map(move |r| format!("{g}/{r}")))
            .collect();
        assert_eq!(names, expected);
        for (first, path) in segment_paths(&scratch.0).expect("segments") {
            let bytes = std::fs::read(&path).expect("a segment");
            if let Some(record) = scan_segment(&bytes, Some(first)).records.first() {
                assert!(
                    bytes[record.payload.clone()].ends_with(b"/0"),
                    "{}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn a_cut_that_fails_stops_the_journal() {
        // Proves an I/O error in a running journal's cut is the journal's fault: the cut's
        // caller and every append after it are told, and nothing more is written.
        crate::faults::alone(module_path!(), "a_cut_that_fails_stops_the_journal", || {
            let scratch = Scratch::new("cut-fault");
            let journal = Journal::start(&scratch.0, 1, Durability::Fsync, SMALL_SEGMENT_BYTES)
                .expect("a journal");
            for g in 0..40 {
                group(&journal, &format!("old{g}"))
                    .recv()
                    .expect("an answer")
                    .expect("durable");
            }
            fail::cfg(points::JOURNAL_WRITE, "return(EIO)").expect("a failpoint");
            let cut = queued(&journal, |j, slot, done| {
                j.cut_from_in(slot, 11, done).expect("queued")
            });
            let after = group(&journal, "after");
            let cut = cut.recv().expect("an answer");
            fail::remove(points::JOURNAL_WRITE);
            assert!(cut.is_err(), "{cut:?}");
            assert!(after.recv().expect("an answer").is_err());
            assert!(journal.has_failed());
            journal.shutdown();
        });
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("a copy");
        for entry in std::fs::read_dir(from).expect("a directory") {
            let path = entry.expect("an entry").path();
            std::fs::copy(&path, to.join(path.file_name().expect("a name"))).expect("copied");
        }
    }
}
