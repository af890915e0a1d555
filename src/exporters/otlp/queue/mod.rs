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

mod disk;
mod segment;
#[cfg(test)]
mod tests;

pub use disk::{DiskQueue, Recovery, SEGMENT_BYTES};
pub use segment::{scan_segment, Scan, ScannedRecord, Skipped, RECORD_HEADER};

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::agent_counters::Telemetry;
use segment::MAX_RECORD;

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

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
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
pub(super) struct BytesGauge {
    pub(super) bytes: u64,
}

impl BytesGauge {
    pub(super) fn add(&mut self, n: u64) {
        self.bytes += n;
        Telemetry::global().queue_bytes.fetch_add(n, Ordering::Relaxed);
    }
    pub(super) fn sub(&mut self, n: u64) {
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

pub(super) fn cost(payload_len: usize) -> u64 {
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
