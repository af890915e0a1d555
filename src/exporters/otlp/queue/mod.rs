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
//!   is one `ExportMetricsServiceRequest` in protobuf encoding, gzipped when the exporter
//!   compresses (a gzip member; [`super::payload`] tells the two apart). Record `i` of a
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
//! (at-least-once, never lost). On open, damage is resynchronised past ([`scan_segment`]): a
//! record that fails its CRC in the middle of a segment is skipped, counted, and the intact
//! records after it are kept; damage with no intact record after it (a write torn by the
//! crash) is truncated away. When a damaged length hid how many records a stretch held, the
//! records after it are sent even if the ack mark says they were delivered.
//!
//! The directory must belong to the agent's user and not be writable by group or others, and
//! no file in it is opened through a symbolic link.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::agent_counters::Telemetry;

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
    #[error("queue directory {path} is refused: {reason}")]
    UnsafeDirectory { path: PathBuf, reason: String },
    #[error("queue file {path} is a symbolic link; it is not followed (remove it, the queue's files are plain files)")]
    Symlink { path: PathBuf },
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
    /// Damaged records skipped in the middle of segments (a lower bound when a damaged
    /// length hid how many there were), counted as dropped batches too.
    pub skipped_records: u64,
    pub skipped_bytes: u64,
    /// Batches evicted at once because the configured bound is smaller than what was queued.
    pub evicted: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// One intact record found by [`scan_segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedRecord {
    pub offset: u64,
    pub len: u32,
    /// Position in the segment (its sequence number minus the segment's first), counting a
    /// damaged stretch of unknown size as one record.
    pub index: u64,
    /// After a damaged stretch whose record count is unknown: the index may be too low, so
    /// the ack mark cannot tell whether this record was delivered.
    pub index_uncertain: bool,
}

/// A damaged stretch in the middle of a segment, skipped to the next intact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub offset: u64,
    pub bytes: u64,
    /// `Some(1)` when the damaged record's length field was intact (its payload failed the
    /// CRC and an intact record follows right after it); `None` when the length was damaged
    /// too and the next record was found by scanning, so the stretch held one or more.
    pub records: Option<u64>,
}

/// What [`scan_segment`] found in one segment's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<ScannedRecord>,
    pub skipped: Vec<Skipped>,
    /// Where the last intact record ends: what follows is a torn or damaged tail, cut off.
    pub good_len: u64,
    /// Records the segment holds by this count: the next index.
    pub count: u64,
}

/// Payload length of an intact record at `offset`, if there is one.
fn record_at(data: &[u8], offset: usize) -> Option<u32> {
    let header = data.get(offset..offset.checked_add(RECORD_HEADER)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD {
        return None;
    }
    let payload = data.get(offset + RECORD_HEADER..(offset + RECORD_HEADER).checked_add(len as usize)?)?;
    (crc32(payload) == crc).then_some(len)
}

/// Scans one segment's bytes for intact records, resynchronising past damage: a record whose
/// payload fails its CRC but whose length leads to an intact record is skipped as one record;
/// otherwise the next offset where an intact record starts (length in bounds, CRC matches) is
/// searched for byte by byte. Damage with no intact record after it is the tail, cut off.
pub fn scan_segment(data: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut offset = 0usize;
    let mut uncertain = false;
    // The byte-by-byte search computes CRCs; a crafted file must not make recovery quadratic.
    let mut search_budget = 4 * data.len() + (1 << 20);
    while offset < data.len() {
        if let Some(len) = record_at(data, offset) {
            scan.records.push(ScannedRecord {
                offset: offset as u64,
                len,
                index: scan.count,
                index_uncertain: uncertain,
            });
            scan.count += 1;
            offset += RECORD_HEADER + len as usize;
            scan.good_len = offset as u64;
            continue;
        }
        let claimed_end = data.get(offset..offset + 4).and_then(|h| {
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            (len <= MAX_RECORD).then(|| offset + RECORD_HEADER + len as usize)
        });
        let next = match claimed_end {
            Some(end) if end < data.len() && record_at(data, end).is_some() => Some((end, Some(1))),
            _ => {
                let mut found = None;
                for candidate in offset + 1..data.len().saturating_sub(RECORD_HEADER - 1) {
                    let claimed = data
                        .get(candidate..candidate + 4)
                        .map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
                    if candidate + RECORD_HEADER + claimed > data.len() {
                        continue;
                    }
                    if search_budget < claimed {
                        break;
                    }
                    search_budget -= claimed + 1;
                    if record_at(data, candidate).is_some() {
                        found = Some((candidate, None));
                        break;
                    }
                }
                found
            }
        };
        let Some((next, records)) = next else { break };
        scan.skipped.push(Skipped { offset: offset as u64, bytes: (next - offset) as u64, records });
        scan.count += 1;
        uncertain |= records.is_none();
        offset = next;
    }
    scan
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

/// Opens a file of the queue without following a symbolic link in its last component: the
/// agent runs as root, and a link planted in the directory must not make it read, truncate or
/// append to a file elsewhere.
fn open_nofollow(options: &mut OpenOptions, path: &Path) -> Result<File, QueueError> {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_NOFOLLOW).open(path).map_err(|source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            QueueError::Symlink { path: path.to_owned() }
        } else {
            QueueError::Io { path: path.to_owned(), source }
        }
    })
}

/// The whole file, or `None` when it does not exist.
fn read_nofollow(path: &Path) -> Result<Option<Vec<u8>>, QueueError> {
    use std::io::Read;
    let mut file = match open_nofollow(OpenOptions::new().read(true), path) {
        Ok(f) => f,
        Err(QueueError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io_err(path))?;
    Ok(Some(data))
}

/// Creates the directory (mode 0700) if missing and refuses one that another user could write
/// to: whoever can create entries in it could make the agent's files point elsewhere, or
/// feed it batches to send with the agent's credentials.
fn prepare_dir(dir: &Path) -> Result<(), QueueError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    let refuse = |reason: String| Err(QueueError::UnsafeDirectory { path: dir.to_owned(), reason });
    if !meta.is_dir() {
        return refuse("it is not a directory".to_owned());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(format!(
            "it is writable by group or others (mode {mode:04o}); make it private (chmod 700)"
        ));
    }
    // SAFETY: geteuid(2) cannot fail and has no arguments.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return refuse(format!(
            "it is owned by uid {}, not by the agent's user (uid {euid}); chown it or choose another",
            meta.uid()
        ));
    }
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<File, QueueError> {
    let path = dir.join(LOCK_FILE);
    let file = open_nofollow(OpenOptions::new().create(true).truncate(false).write(true), &path)?;
    if let Err(errno) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        let err = io::Error::from(errno);
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
        prepare_dir(dir)?;
        let lock = lock_dir(dir)?;
        let acked_path = dir.join(ACKED_FILE);
        let acked = match read_nofollow(&acked_path)? {
            Some(text) => {
                std::str::from_utf8(&text).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or_else(|| {
                    // Re-sending everything is the at-least-once answer to a damaged ack mark.
                    tracing::warn!(path = %acked_path.display(), "The queue's ack mark is unreadable; every queued batch will be sent again.");
                    0
                })
            }
            None => 0,
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
            let data = read_nofollow(&path)?.unwrap_or_default();
            let scan = scan_segment(&data);
            if !scan.skipped.is_empty() {
                let bytes: u64 = scan.skipped.iter().map(|k| k.bytes).sum();
                let records: u64 = scan.skipped.iter().map(|k| k.records.unwrap_or(1)).sum();
                let exact = scan.skipped.iter().all(|k| k.records.is_some());
                tracing::warn!(
                    path = %path.display(),
                    offset = scan.skipped[0].offset,
                    bytes,
                    records,
                    exact,
                    "A queue segment has damaged records; skipping them and keeping the intact records after them."
                );
                recovery.skipped_bytes += bytes;
                recovery.skipped_records += records;
            }
            let good_len = scan.good_len;
            if good_len < data.len() as u64 {
                let cut = data.len() as u64 - good_len;
                tracing::warn!(
                    path = %path.display(),
                    offset = good_len,
                    bytes = cut,
                    kept = scan.records.len(),
                    "A queue segment ends in a damaged or torn record; truncating it there and keeping the records before."
                );
                let f = open_nofollow(OpenOptions::new().write(true), &path)?;
                f.set_len(good_len).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                recovery.truncated_bytes += cut;
            }
            for r in &scan.records {
                let seq = first + r.index;
                // After damage of unknown size the index may be too low: such a record may
                // not have been delivered yet whatever the ack mark says, so it is sent
                // (again): at least once, never lost.
                if seq >= acked || r.index_uncertain {
                    q.records.push_back(RecordLoc {
                        seq,
                        segment_first_seq: first,
                        offset: r.offset,
                        len: r.len,
                    });
                    q.gauge.add(cost(r.len as usize));
                }
            }
            q.next_seq = q.next_seq.max(first + scan.count);
            q.segments.push_back(SegmentMeta { first_seq: first, path, count: scan.count, len: good_len });
        }
        q.drop_consumed_segments()?;
        // A smaller bound than last time applies at once.
        let mut evicted = 0;
        while q.gauge.bytes > q.max_bytes && !q.records.is_empty() {
            q.pop_front()?;
            evicted += 1;
        }
        if evicted > 0 {
            recovery.evicted = evicted;
            q.write_acked()?;
            q.drop_consumed_segments()?;
        }
        recovery.batches = q.records.len();
        Ok((q, recovery))
    }

    fn push(&mut self, payload: &[u8]) -> Result<usize, QueueError> {
        // Checked before evicting: a batch that cannot be stored must not empty the queue.
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| QueueError::TooLarge { path: self.dir.clone(), len: payload.len() })?;
        let mut evicted = 0;
        while !self.records.is_empty() && self.gauge.bytes + cost(payload.len()) > self.max_bytes {
            self.pop_front()?;
            evicted += 1;
        }
        if evicted > 0 {
            self.write_acked()?;
            self.drop_consumed_segments()?;
        }
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
            // A full disk whose last segment holds only delivered records would stay full for
            // good (a segment is deleted only once a newer one exists): delete it and write
            // this batch into a new one, once. The new segment starts empty, so this cannot
            // repeat.
            let consumed = seg.count > 0 && seg.first_seq + seg.count <= self.acked;
            if !consumed {
                return Err(QueueError::Io { path: seg.path.clone(), source });
            }
            self.writer = None;
            self.drop_consumed_segments()?;
            return self.push(payload).map(|more| evicted + more);
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
            let file = open_nofollow(OpenOptions::new().create(true).append(true), &path)?;
            // Start clean even if a file of that name was left behind empty.
            file.set_len(0).map_err(io_err(&path))?;
            sync_dir(&self.dir)?;
            self.segments.push_back(SegmentMeta { first_seq: self.next_seq, path, count: 0, len: 0 });
            self.writer = Some(file);
        } else {
            let seg = self.segments.back().expect("checked above");
            let file = open_nofollow(OpenOptions::new().append(true), &seg.path)?;
            self.writer = Some(file);
        }
        Ok(())
    }

    fn head(&mut self) -> Result<Option<Head>, QueueError> {
        let Some(loc) = self.records.front().copied() else { return Ok(None) };
        let path = self.dir.join(segment_name(loc.segment_first_seq));
        let file = open_nofollow(OpenOptions::new().read(true), &path)?;
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
            // A record re-sent after damage of unknown size may sit below the mark.
            self.acked = self.acked.max(loc.seq + 1);
        }
        Ok(())
    }

    fn write_acked(&self) -> Result<(), QueueError> {
        let tmp = self.dir.join(ACKED_TMP);
        let mut file = open_nofollow(OpenOptions::new().create(true).write(true).truncate(true), &tmp)?;
        file.write_all(format!("{}\n", self.acked).as_bytes()).map_err(io_err(&tmp))?;
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
        assert_eq!(scan_segment(&data), Scan::default());
        assert_eq!(scan_segment(&[1, 2, 3]), Scan::default());
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
}
