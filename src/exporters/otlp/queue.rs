//! The queue of encoded batches waiting to be sent, in memory or on disk.
//!
//! Both kinds are bounded by bytes and evict the oldest batch when full: during a long outage
//! the newest data is the most useful. Every batch has a sequence number; the sender peeks the
//! head, sends it, and acks it by number, so a batch evicted while in flight is acked as a
//! no-op rather than removing its successor.
//!
//! # On-disk format
//!
//! A directory per exporter instance holds:
//! - segment files `<first-seq, 20 digits>.seg`, each a run of records
//!   `[u32 LE payload length][u32 LE CRC-32 (IEEE) of the payload][payload]`, where the payload
//!   is one `ExportMetricsServiceRequest` in protobuf encoding, uncompressed. Record `i` of a
//!   segment has sequence number `first-seq + i`. A new segment starts when the current one
//!   passes [`SEGMENT_BYTES`]; a segment is deleted once all its records are acked.
//! - `lock`: held with `flock(LOCK_EX)` while a queue is open, so two exporters or two agents
//!   never append to the same directory; the kernel releases it when the process dies.
//! - `acked`: the decimal sequence number of the first batch not yet delivered (or evicted),
//!   replaced atomically (write `acked.tmp`, rename).
//!
//! Durability: each appended record is `fdatasync`ed before `push` returns, and a new segment's
//! directory entry is synced, so an accepted batch survives a crash or power loss. The `acked`
//! file is not synced: after a crash it may lag, and the batches after it are sent again
//! (at-least-once, never lost). On open, a record that is cut short or fails its CRC (a write
//! torn by the crash) is truncated away with everything after it in that segment; records
//! before it are kept.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::telemetry::Telemetry;

pub const RECORD_HEADER: usize = 8;
/// A segment is closed and a new one begun past this size.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// No batch is this large; a length field above it is damage, not data.
const MAX_RECORD: u32 = 256 * 1024 * 1024;
const ACKED_FILE: &str = "acked";
const LOCK_FILE: &str = "lock";
const ACKED_TMP: &str = "acked.tmp";
const SEGMENT_SUFFIX: &str = ".seg";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("queue file {path} is damaged at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: &'static str },
    #[error("queue directory {path} is in use by another exporter or agent (give each its own directory)")]
    InUse { path: PathBuf },
    #[error("a batch of {len} bytes is larger than a queue record may be ({MAX_RECORD} bytes), in {path}")]
    TooLarge { path: PathBuf, len: usize },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |source| QueueError::Io { path: path.to_owned(), source }
}

/// The batch at the head of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub payload: Bytes,
}

pub enum Queue {
    Memory(MemoryQueue),
    Disk(DiskQueue),
}

impl Queue {
    /// Adds a batch, evicting the oldest while the bound would be exceeded; returns how many
    /// were evicted.
    pub fn push(&mut self, payload: Bytes) -> Result<usize, QueueError> {
        match self {
            Queue::Memory(q) => Ok(q.push(payload)),
            Queue::Disk(q) => q.push(&payload),
        }
    }

    pub fn head(&mut self) -> Result<Option<Head>, QueueError> {
        match self {
            Queue::Memory(q) => Ok(q.head()),
            Queue::Disk(q) => q.head(),
        }
    }

    /// Removes batch `seq` if it is still the head.
    pub fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        match self {
            Queue::Memory(q) => {
                q.ack(seq);
                Ok(())
            }
            Queue::Disk(q) => q.ack(seq),
        }
    }

    /// Sequence number of the head, without reading its payload.
    pub fn head_seq(&self) -> Option<u64> {
        match self {
            Queue::Memory(q) => q.entries.front().map(|(s, _)| *s),
            Queue::Disk(q) => q.records.front().map(|r| r.seq),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Queue::Memory(q) => q.entries.len(),
            Queue::Disk(q) => q.records.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accounted bytes: payloads plus record headers.
    pub fn bytes(&self) -> u64 {
        match self {
            Queue::Memory(q) => q.gauge.bytes,
            Queue::Disk(q) => q.gauge.bytes,
        }
    }
}

/// Keeps this queue's share of the global `queue_bytes` current.
#[derive(Debug, Default)]
struct BytesGauge {
    bytes: u64,
}

impl BytesGauge {
    fn add(&mut self, n: u64) {
        self.bytes += n;
        Telemetry::global().queue_bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn sub(&mut self, n: u64) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        Telemetry::global().queue_bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for BytesGauge {
    fn drop(&mut self) {
        let n = self.bytes;
        self.sub(n);
    }
}

fn cost(payload_len: usize) -> u64 {
    (payload_len + RECORD_HEADER) as u64
}

pub struct MemoryQueue {
    max_bytes: u64,
    next_seq: u64,
    entries: VecDeque<(u64, Bytes)>,
    gauge: BytesGauge,
}

impl MemoryQueue {
    pub fn new(max_bytes: u64) -> MemoryQueue {
        MemoryQueue { max_bytes, next_seq: 0, entries: VecDeque::new(), gauge: BytesGauge::default() }
    }

    fn push(&mut self, payload: Bytes) -> usize {
        let mut evicted = 0;
        while !self.entries.is_empty() && self.gauge.bytes + cost(payload.len()) > self.max_bytes {
            if let Some((_, old)) = self.entries.pop_front() {
                self.gauge.sub(cost(old.len()));
                evicted += 1;
            }
        }
        self.gauge.add(cost(payload.len()));
        self.entries.push_back((self.next_seq, payload));
        self.next_seq += 1;
        evicted
    }

    fn head(&self) -> Option<Head> {
        self.entries.front().map(|(seq, payload)| Head { seq: *seq, payload: payload.clone() })
    }

    fn ack(&mut self, seq: u64) {
        if self.entries.front().map(|(s, _)| *s) == Some(seq) {
            if let Some((_, old)) = self.entries.pop_front() {
                self.gauge.sub(cost(old.len()));
            }
        }
    }
}

#[derive(Debug, Clone)]
struct SegmentMeta {
    first_seq: u64,
    path: PathBuf,
    /// Records in the file, acked ones included.
    count: u64,
    len: u64,
}

#[derive(Debug, Clone, Copy)]
struct RecordLoc {
    seq: u64,
    /// Index into `segments` is unstable as segments are deleted; the first seq is not.
    segment_first_seq: u64,
    offset: u64,
    len: u32,
}

pub struct DiskQueue {
    dir: PathBuf,
    max_bytes: u64,
    segments: VecDeque<SegmentMeta>,
    records: VecDeque<RecordLoc>,
    /// First sequence number not yet acked.
    acked: u64,
    next_seq: u64,
    writer: Option<File>,
    gauge: BytesGauge,
    /// Holds the directory's flock for as long as the queue is open.
    _lock: File,
}

/// What reopening a queue directory found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub batches: usize,
    /// Bytes cut off damaged segment tails.
    pub truncated_bytes: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// Scans one segment's bytes: the complete, intact records and where the intact prefix ends.
pub fn scan_segment(data: &[u8]) -> (Vec<(u64, u32)>, u64) {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset + RECORD_HEADER <= data.len() {
        let len = u32::from_le_bytes([data[offset], data[offset + 1], data[offset + 2], data[offset + 3]]);
        let crc =
            u32::from_le_bytes([data[offset + 4], data[offset + 5], data[offset + 6], data[offset + 7]]);
        let start = offset + RECORD_HEADER;
        let Some(end) = start.checked_add(len as usize) else { break };
        if len > MAX_RECORD || end > data.len() || crc32(&data[start..end]) != crc {
            break;
        }
        records.push((offset as u64, len));
        offset = end;
    }
    (records, offset as u64)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

fn lock_dir(dir: &Path) -> Result<File, QueueError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file =
        OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.kind() == io::ErrorKind::WouldBlock {
            QueueError::InUse { path: dir.to_owned() }
        } else {
            QueueError::Io { path, source: err }
        });
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl DiskQueue {
    /// Opens (creating if needed) the queue in `dir`, recovering what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(DiskQueue, Recovery), QueueError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        let acked_path = dir.join(ACKED_FILE);
        let acked = match fs::read_to_string(&acked_path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                // Re-sending everything is the at-least-once answer to a damaged ack mark.
                tracing::warn!(path = %acked_path.display(), "The queue's ack mark is unreadable; every queued batch will be sent again.");
                0
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(source) => return Err(QueueError::Io { path: acked_path, source }),
        };

        let mut firsts: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
                if let Ok(first) = stem.parse::<u64>() {
                    firsts.push(first);
                }
            }
        }
        firsts.sort_unstable();

        let mut q = DiskQueue {
            dir: dir.to_owned(),
            max_bytes,
            segments: VecDeque::new(),
            records: VecDeque::new(),
            acked,
            next_seq: acked,
            writer: None,
            gauge: BytesGauge::default(),
            _lock: lock,
        };
        let mut recovery = Recovery::default();
        for first in firsts {
            let path = dir.join(segment_name(first));
            let data = fs::read(&path).map_err(io_err(&path))?;
            let (found, good_len) = scan_segment(&data);
            if good_len < data.len() as u64 {
                let cut = data.len() as u64 - good_len;
                tracing::warn!(
                    path = %path.display(),
                    offset = good_len,
                    bytes = cut,
                    kept = found.len(),
                    "A queue segment ends in a damaged or torn record; truncating it there and keeping the records before."
                );
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(good_len).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                recovery.truncated_bytes += cut;
            }
            for (i, (offset, len)) in found.iter().enumerate() {
                let seq = first + i as u64;
                if seq >= acked {
                    q.records.push_back(RecordLoc {
                        seq,
                        segment_first_seq: first,
                        offset: *offset,
                        len: *len,
                    });
                    q.gauge.add(cost(*len as usize));
                }
            }
            q.next_seq = q.next_seq.max(first + found.len() as u64);
            q.segments.push_back(SegmentMeta {
                first_seq: first,
                path,
                count: found.len() as u64,
                len: good_len,
            });
        }
        q.drop_consumed_segments()?;
        // A smaller bound than last time applies at once.
        let mut evicted = 0;
        while q.gauge.bytes > q.max_bytes && !q.records.is_empty() {
            q.pop_front()?;
            evicted += 1;
        }
        if evicted > 0 {
            Telemetry::global().batches_evicted.fetch_add(evicted, Ordering::Relaxed);
            q.write_acked()?;
            q.drop_consumed_segments()?;
        }
        recovery.batches = q.records.len();
        Ok((q, recovery))
    }

    fn push(&mut self, payload: &[u8]) -> Result<usize, QueueError> {
        let mut evicted = 0;
        while !self.records.is_empty() && self.gauge.bytes + cost(payload.len()) > self.max_bytes {
            self.pop_front()?;
            evicted += 1;
        }
        if evicted > 0 {
            self.write_acked()?;
            self.drop_consumed_segments()?;
        }
        let len = u32::try_from(payload.len()).ok().filter(|l| *l <= MAX_RECORD).ok_or_else(|| {
            QueueError::Corrupt {
                path: self.dir.clone(),
                offset: 0,
                reason: "batch larger than a queue record may be",
            }
        })?;
        let rotate = self.segments.back().map(|s| s.len >= SEGMENT_BYTES).unwrap_or(true);
        if rotate || self.writer.is_none() {
            self.open_writer(rotate)?;
        }
        let seg = self.segments.back_mut().expect("open_writer leaves a segment");
        let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32(payload).to_le_bytes());
        record.extend_from_slice(payload);
        let writer = self.writer.as_mut().expect("open_writer sets the writer");
        let offset = seg.len;
        let write = writer.write_all(&record).and_then(|_| writer.sync_data());
        if let Err(source) = write {
            // A partial record would poison later appends; cut back to the last good end.
            let _ = writer.set_len(offset);
            return Err(QueueError::Io { path: seg.path.clone(), source });
        }
        seg.len += record.len() as u64;
        seg.count += 1;
        let seq = seg.first_seq + seg.count - 1;
        debug_assert_eq!(seq, self.next_seq);
        self.next_seq = seq + 1;
        self.records.push_back(RecordLoc { seq, segment_first_seq: seg.first_seq, offset, len });
        self.gauge.add(cost(payload.len()));
        Ok(evicted)
    }

    /// Opens the last segment for appending, or starts a new one at `next_seq`.
    fn open_writer(&mut self, new_segment: bool) -> Result<(), QueueError> {
        let reuse = !new_segment
            && self.segments.back().map(|s| s.first_seq + s.count == self.next_seq).unwrap_or(false);
        if !reuse {
            let path = self.dir.join(segment_name(self.next_seq));
            let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
            // Start clean even if a file of that name was left behind empty.
            file.set_len(0).map_err(io_err(&path))?;
            sync_dir(&self.dir)?;
            self.segments.push_back(SegmentMeta { first_seq: self.next_seq, path, count: 0, len: 0 });
            self.writer = Some(file);
        } else {
            let seg = self.segments.back().expect("checked above");
            let file = OpenOptions::new().append(true).open(&seg.path).map_err(io_err(&seg.path))?;
            self.writer = Some(file);
        }
        Ok(())
    }

    fn head(&mut self) -> Result<Option<Head>, QueueError> {
        let Some(loc) = self.records.front().copied() else { return Ok(None) };
        let path = self.dir.join(segment_name(loc.segment_first_seq));
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut buf = vec![0u8; RECORD_HEADER + loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset).map_err(io_err(&path))?;
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let payload = Bytes::from(buf).slice(RECORD_HEADER..);
        if crc32(&payload) != crc {
            return Err(QueueError::Corrupt {
                path,
                offset: loc.offset,
                reason: "record changed on disk since it was written",
            });
        }
        Ok(Some(Head { seq: loc.seq, payload }))
    }

    fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        if self.records.front().map(|r| r.seq) != Some(seq) {
            return Ok(());
        }
        self.pop_front()?;
        self.write_acked()?;
        self.drop_consumed_segments()
    }

    fn pop_front(&mut self) -> Result<(), QueueError> {
        if let Some(loc) = self.records.pop_front() {
            self.gauge.sub(cost(loc.len as usize));
            self.acked = loc.seq + 1;
        }
        Ok(())
    }

    fn write_acked(&self) -> Result<(), QueueError> {
        let tmp = self.dir.join(ACKED_TMP);
        fs::write(&tmp, format!("{}\n", self.acked)).map_err(io_err(&tmp))?;
        let path = self.dir.join(ACKED_FILE);
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Deletes segments all of whose records are acked, except the one being appended to.
    fn drop_consumed_segments(&mut self) -> Result<(), QueueError> {
        while self.segments.len() > 1 || (self.writer.is_none() && !self.segments.is_empty()) {
            let seg = self.segments.front().expect("non-empty");
            if seg.first_seq + seg.count > self.acked {
                break;
            }
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(QueueError::Io { path: seg.path.clone(), source }),
            }
            self.segments.pop_front();
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn scan_rejects_absurd_lengths_without_panicking() {
        let mut data = Vec::new();
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(b"short");
        assert_eq!(scan_segment(&data), (Vec::new(), 0));
        assert_eq!(scan_segment(&[1, 2, 3]), (Vec::new(), 0));
    }
}
