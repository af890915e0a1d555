//! procfs files kept open across sweeps and re-read with `pread`: opening a namespace's files
//! again every sweep cost more than reading them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Reads a kept-open procfs file whole from offset 0 into `buf`.
pub(super) fn pread_text<'b>(file: &File, buf: &'b mut Vec<u8>) -> io::Result<&'b str> {
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize((buf.len() * 2).max(4096), 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    std::str::from_utf8(&buf[..len]).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Whether one more `net/dev` may stay open: at most a sixteenth of the open-file limit, so that
/// namespaces never take the descriptors the cgroup source and the exporters need.
pub(super) fn may_keep_open(open: usize) -> bool {
    crate::fdlimit::current().map(|l| (open as u64) < l.soft / 16).unwrap_or(false)
}
