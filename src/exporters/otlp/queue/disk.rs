//! The queue on disk: segment files of records, an ack mark, a lock (see the format in the
//! parent module's documentation).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::segment::{crc32, scan_segment, MAX_RECORD, RECORD_HEADER};
use super::{cost, io_err, BytesGauge, Head, QueueError};

/// A segment is closed and a new one begun past this size.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
pub(super) const ACKED_FILE: &str = "acked";
const LOCK_FILE: &str = "lock";
const ACKED_TMP: &str = "acked.tmp";
pub(super) const SEGMENT_SUFFIX: &str = ".seg";

#[derive(Debug, Clone)]
struct SegmentMeta {
    first_seq: u64,
    path: PathBuf,
    /// Records in the file, acked ones included.
    count: u64,
    len: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RecordLoc {
    pub(super) seq: u64,
    /// Index into `segments` is unstable as segments are deleted; the first seq is not.
    segment_first_seq: u64,
    pub(super) offset: u64,
    len: u32,
}

pub struct DiskQueue {
    dir: PathBuf,
    max_bytes: u64,
    segments: VecDeque<SegmentMeta>,
    pub(super) records: VecDeque<RecordLoc>,
    /// First sequence number not yet acked.
    acked: u64,
    next_seq: u64,
    writer: Option<File>,
    pub(super) gauge: BytesGauge,
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

pub(super) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
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

    pub(super) fn push(&mut self, payload: &[u8]) -> Result<usize, QueueError> {
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

    pub(super) fn head(&mut self) -> Result<Option<Head>, QueueError> {
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

    pub(super) fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
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
