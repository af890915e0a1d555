//! The queue's behaviour through [`Queue`], in memory and on disk: order, eviction, acks,
//! reopening, and recovery from damaged segments.

use std::fs::{self, OpenOptions};
use std::path::Path;

use bytes::Bytes;

use super::disk::{segment_name, ACKED_FILE, SEGMENT_SUFFIX};
use super::segment::MAX_RECORD;
use super::*;

fn payload(i: u32) -> Bytes {
    // Varying lengths so offsets are not all alike.
    Bytes::from(format!("batch-{i}-{}", "x".repeat((i % 7) as usize)).into_bytes())
}

fn drain(q: &mut Queue) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(h) = q.head().unwrap() {
        out.push(h.payload.clone());
        q.ack(h.seq).unwrap();
    }
    out
}

#[test]
fn a_queue_directory_is_used_by_one_queue_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    let second = DiskQueue::open(dir.path(), 1 << 20).err().expect("the directory is locked");
    assert!(matches!(second, QueueError::InUse { .. }), "{second}");
    drop(first);
    assert!(DiskQueue::open(dir.path(), 1 << 20).is_ok(), "the lock goes with the queue");
}

#[test]
fn ack_of_a_batch_no_longer_at_the_head_is_ignored() {
    let mut q = Queue::Memory(MemoryQueue::new(cost(payload(1).len()) + 1));
    q.push(payload(1)).unwrap();
    let in_flight = q.head().unwrap().unwrap();
    assert_eq!(q.push(payload(8)).unwrap(), 1, "the in-flight batch is evicted");
    q.ack(in_flight.seq).unwrap();
    assert_eq!(drain(&mut q), vec![payload(8)], "the successor is not lost to a stale ack");
}

#[test]
fn disk_queue_reopened_gives_the_same_batches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut q, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec, Recovery::default());
        for i in 0..50 {
            q.push(&payload(i)).unwrap();
        }
    }
    let (q, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.batches, 50);
    let mut q = Queue::Disk(q);
    assert_eq!(drain(&mut q), (0..50).map(payload).collect::<Vec<_>>());
}

#[test]
fn acked_batches_are_not_delivered_again_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
        let mut q = Queue::Disk(q);
        for i in 0..10 {
            q.push(payload(i)).unwrap();
        }
        for _ in 0..4 {
            let h = q.head().unwrap().unwrap();
            q.ack(h.seq).unwrap();
        }
    }
    let (q, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.batches, 6);
    let mut q = Queue::Disk(q);
    q.push(payload(10)).unwrap();
    assert_eq!(drain(&mut q), (4..=10).map(payload).collect::<Vec<_>>());
    drop(q);
    let (q, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.batches, 0);
    assert_eq!(q.records.len(), 0);
}

#[test]
fn a_torn_last_record_is_cut_and_the_complete_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut q, _) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5 {
            q.push(&payload(i)).unwrap();
        }
    }
    let seg = dir.path().join(segment_name(0));
    let full = fs::metadata(&seg).unwrap().len();
    // Cut the last record in the middle of its payload, as a crash mid-write would.
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(full - 3).unwrap();
    drop(f);
    let (q, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.batches, 4);
    assert_eq!(rec.truncated_bytes, (RECORD_HEADER + payload(4).len() - 3) as u64);
    let mut q = Queue::Disk(q);
    // Appending after recovery continues the sequence cleanly.
    q.push(payload(99)).unwrap();
    let mut expected: Vec<Bytes> = (0..4).map(payload).collect();
    expected.push(payload(99));
    assert_eq!(drain(&mut q), expected);
}

#[test]
fn a_flipped_byte_fails_the_crc_and_is_cut_too() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut q, _) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            q.push(&payload(i)).unwrap();
        }
    }
    let seg = dir.path().join(segment_name(0));
    let mut data = fs::read(&seg).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&seg, &data).unwrap();
    let (q, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.batches, 2);
    assert_eq!(drain(&mut Queue::Disk(q)), (0..2).map(payload).collect::<Vec<_>>());
}

#[test]
fn disk_queue_bound_evicts_oldest_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let bound = cost(payload(0).len() + 6) * 4;
    let evicted_total;
    {
        let (mut q, _) = DiskQueue::open(dir.path(), bound).unwrap();
        let mut ev = 0;
        for i in 0..20 {
            ev += q.push(&payload(i)).unwrap();
        }
        assert!(q.gauge.bytes <= bound);
        evicted_total = ev;
    }
    let (q, rec) = DiskQueue::open(dir.path(), bound).unwrap();
    assert_eq!(rec.batches + evicted_total, 20);
    let got = drain(&mut Queue::Disk(q));
    let first = 20 - got.len() as u32;
    assert_eq!(got, (first..20).map(payload).collect::<Vec<_>>());
}

#[test]
fn segments_rotate_and_consumed_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let big = Bytes::from(vec![7u8; (SEGMENT_BYTES / 2) as usize]);
    let (q, _) = DiskQueue::open(dir.path(), 64 << 20).unwrap();
    let mut q = Queue::Disk(q);
    for _ in 0..5 {
        q.push(big.clone()).unwrap();
    }
    let count_segments = || {
        fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(SEGMENT_SUFFIX))
            .count()
    };
    assert!(count_segments() >= 2, "{} segments", count_segments());
    assert_eq!(drain(&mut q).len(), 5);
    assert_eq!(count_segments(), 1, "only the segment being appended to remains");
}

fn write_records(dir: &Path, n: u32) -> Vec<u64> {
    let (mut q, _) = DiskQueue::open(dir, 1 << 20).unwrap();
    for i in 0..n {
        q.push(&payload(i)).unwrap();
    }
    q.records.iter().map(|r| r.offset).collect()
}

#[test]
fn a_damaged_record_in_the_middle_is_skipped_and_the_records_after_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = write_records(dir.path(), 6);
    let seg = dir.path().join(segment_name(0));
    let mut data = fs::read(&seg).unwrap();
    data[offsets[2] as usize + RECORD_HEADER + 1] ^= 0x55; // payload of record 2
    fs::write(&seg, &data).unwrap();
    let (mut q, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((rec.batches, rec.skipped_records, rec.truncated_bytes), (5, 1, 0), "{rec:?}");
    assert_eq!(rec.skipped_bytes, (RECORD_HEADER + payload(2).len()) as u64);
    q.push(&payload(99)).unwrap();
    drop(q);
    // Reopening finds the same damage and numbers the records the same way.
    let (q, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.batches, 6);
    let expected: Vec<Bytes> = [0, 1, 3, 4, 5, 99].into_iter().map(payload).collect();
    assert_eq!(drain(&mut Queue::Disk(q)), expected);
}

#[test]
fn a_damaged_length_is_resynchronised_and_nothing_undelivered_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = write_records(dir.path(), 6);
    {
        let (q, _) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
        let mut q = Queue::Disk(q);
        for _ in 0..3 {
            let h = q.head().unwrap().unwrap();
            q.ack(h.seq).unwrap();
        }
    }
    let seg = dir.path().join(segment_name(0));
    let mut data = fs::read(&seg).unwrap();
    let at = offsets[1] as usize;
    data[at..at + 4].copy_from_slice(&0x00ff_fff0u32.to_le_bytes()); // length of record 1
    fs::write(&seg, &data).unwrap();
    let (q, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.skipped_records, 1, "{rec:?}");
    assert_eq!(rec.truncated_bytes, 0);
    // Records 2 and 4..5 are after damage of unknown size: the ack mark (3) cannot be
    // trusted for them, so 2 is sent again rather than risk losing 3..5.
    let expected: Vec<Bytes> = [2, 3, 4, 5].into_iter().map(payload).collect();
    assert_eq!(drain(&mut Queue::Disk(q)), expected);
    let (_, rec) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(rec.batches, 0, "delivered records stay delivered: {rec:?}");
}

#[test]
fn a_batch_too_large_for_a_record_is_too_large_and_evicts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 3);
    let (mut q, _) = DiskQueue::open(dir.path(), 1 << 20).unwrap();
    let huge = vec![0u8; MAX_RECORD as usize + 1];
    let err = q.push(&huge).unwrap_err();
    assert!(matches!(err, QueueError::TooLarge { len, .. } if len == huge.len()), "{err}");
    assert_eq!(q.records.len(), 3, "the queued batches are still there");
}

#[test]
fn queue_files_are_not_opened_through_symbolic_links() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"precious, not a queue segment").unwrap();
    let link = dir.path().join(segment_name(0));
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let err = DiskQueue::open(dir.path(), 1 << 20).err().expect("a linked segment is refused");
    assert!(matches!(&err, QueueError::Symlink { path } if *path == link), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious, not a queue segment");

    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(ACKED_FILE)).unwrap();
    let err = DiskQueue::open(dir.path(), 1 << 20).err().expect("a linked ack mark is refused");
    assert!(matches!(err, QueueError::Symlink { .. }), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious, not a queue segment");
}

#[test]
fn a_directory_others_can_write_to_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o777, 0o1777, 0o720, 0o702] {
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
        let err = DiskQueue::open(dir.path(), 1 << 20).err().expect("refused");
        assert!(matches!(err, QueueError::UnsafeDirectory { .. }), "{mode:o}: {err}");
        assert!(err.to_string().contains("writable by group or others"), "{err}");
    }
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
    assert!(DiskQueue::open(dir.path(), 1 << 20).is_ok(), "0750 is fine");
    // SAFETY: geteuid has no arguments; chown on a path this test owns.
    if unsafe { libc::geteuid() } == 0 {
        let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        let err = DiskQueue::open(dir.path(), 1 << 20).err().expect("refused");
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
    let fresh = dir.path().join("new/queue");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 0, 0) }, 0);
    }
    DiskQueue::open(&fresh, 1 << 20).unwrap();
    assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700, "created private");
}

#[test]
fn memory_queue_is_fifo_and_evicts_the_oldest_when_full() {
    let bound = cost(payload(1).len()) * 3 + 20;
    let mut q = Queue::Memory(MemoryQueue::new(bound));
    let mut evicted = 0;
    for i in 1..=5 {
        evicted += q.push(payload(i)).unwrap();
    }
    assert!(q.bytes() <= bound, "{} > {bound}", q.bytes());
    assert!(evicted >= 2, "five batches cannot fit in room for about three");
    assert_eq!(evicted + q.len(), 5);
    let left = drain(&mut q);
    let expected: Vec<Bytes> = ((6 - left.len() as u32)..=5).map(payload).collect();
    assert_eq!(left, expected, "the newest survive, in order");
    assert_eq!(q.bytes(), 0);
}
