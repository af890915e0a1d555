//! The record format of a queue segment (`[u32 LE length][u32 LE CRC-32][payload]`) and the
//! scan that finds the intact records of a possibly damaged segment.

/// Bytes before each record's payload: its length and its CRC-32.
pub const RECORD_HEADER: usize = 8;
/// No batch is this large; a length field above it is damage, not data.
pub(super) const MAX_RECORD: u32 = 256 * 1024 * 1024;

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

pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_rejects_absurd_lengths_without_panicking() {
        let mut data = Vec::new();
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(b"short");
        assert_eq!(scan_segment(&data), Scan::default());
        assert_eq!(scan_segment(&[1, 2, 3]), Scan::default());
    }
}
