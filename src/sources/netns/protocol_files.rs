//! The file layer under [`super::protocols`]: each namespace's protocol files, opened once
//! through a member's `/proc/<pid>/net/` and re-read with `pread` every sweep, like its
//! `net/dev`. procfs builds these texts anew on every read from offset 0 (they are `seq_file`s
//! over the namespace's MIBs; `tests/netns_protocols_live.rs` checks that a kept file shows
//! new counts), so keeping them open saves the path walk and the open, nothing else.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::Path;

use super::protocols::{ProtocolCounters, ProtocolFile, ProtocolSelection};
use super::{pread_text, NetnsError, NsKey};
use crate::agent_counters::Telemetry;
use crate::sources::is_vanished;
use crate::warn_limited;

/// One namespace's files, in the selection's order; `None` for an IPv6 file the kernel does
/// not have (IPv6 off), which is not looked for again while the namespace lives.
type NsFiles = Vec<Option<File>>;

pub(super) struct ProtocolReader {
    selection: ProtocolSelection,
    files: HashMap<NsKey, NsFiles>,
    buf: Vec<u8>,
}

impl ProtocolReader {
    pub(super) fn new(selection: ProtocolSelection) -> ProtocolReader {
        ProtocolReader { selection, files: HashMap::new(), buf: vec![0; 8192] }
    }

    pub(super) fn selection(&self) -> &ProtocolSelection {
        &self.selection
    }

    /// Whether any protocol metric is wanted (else nothing is ever read).
    pub(super) fn enabled(&self) -> bool {
        !self.selection.files().is_empty()
    }

    /// Files held open, for the descriptor budget.
    pub(super) fn open_count(&self) -> usize {
        self.files.values().map(|f| f.iter().flatten().count()).sum()
    }

    /// The counters of namespace `key`: from its kept files, else through `pid` (a member just
    /// read for `net/dev`). `keep` says whether newly opened files may stay open. `None` (logged
    /// and counted when it is an error, quiet when the process went away) when a file could
    /// not be read or parsed: the namespace then gets no protocol points this sweep.
    pub(super) fn read(
        &mut self,
        key: NsKey,
        proc_root: &Path,
        pid: u32,
        keep: bool,
    ) -> Option<ProtocolCounters> {
        let kinds = self.selection.files();
        if let Some(files) = self.files.get(&key) {
            let mut counters = ProtocolCounters::default();
            let read = kinds.iter().zip(files).try_for_each(|(kind, file)| match file {
                Some(f) => read_one(&self.selection, *kind, f, &mut self.buf, &mut counters, proc_root, pid),
                None => Ok(()),
            });
            match read {
                Ok(()) => return Some(counters),
                Err(Failure::Parse(e)) => return report(e),
                // A kept file that fails to read is dropped and the namespace opened afresh.
                Err(Failure::Io(_)) => {
                    self.files.remove(&key);
                }
            }
        }
        let mut counters = ProtocolCounters::default();
        let mut opened: NsFiles = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let path = proc_root.join(pid.to_string()).join(kind.path());
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && kind.optional() => {
                    opened.push(None);
                    continue;
                }
                Err(e) if is_vanished(&e) => return None,
                Err(source) => return report(NetnsError::Read { path, source }),
            };
            match read_one(&self.selection, *kind, &file, &mut self.buf, &mut counters, proc_root, pid) {
                Ok(()) => opened.push(Some(file)),
                Err(Failure::Io(e)) if is_vanished(&e) => return None,
                Err(Failure::Io(source)) => return report(NetnsError::Read { path, source }),
                Err(Failure::Parse(e)) => return report(e),
            }
        }
        if keep {
            self.files.insert(key, opened);
        }
        Some(counters)
    }

    /// Closes the files of namespaces no longer in use: an open file keeps its namespace alive.
    pub(super) fn retain(&mut self, live: &HashSet<NsKey>) {
        self.files.retain(|key, _| live.contains(key));
    }
}

enum Failure {
    Io(io::Error),
    Parse(NetnsError),
}

fn read_one(
    selection: &ProtocolSelection,
    kind: ProtocolFile,
    file: &File,
    buf: &mut Vec<u8>,
    into: &mut ProtocolCounters,
    proc_root: &Path,
    pid: u32,
) -> Result<(), Failure> {
    let text = pread_text(file, buf).map_err(Failure::Io)?;
    selection.parse(kind, text, into).map_err(|source| {
        Failure::Parse(NetnsError::Parse { path: proc_root.join(pid.to_string()).join(kind.path()), source })
    })
}

fn report(e: NetnsError) -> Option<ProtocolCounters> {
    Telemetry::inc(&Telemetry::global().source_errors);
    warn_limited!("netns.protocols", error = %e, "Cannot read a namespace's TCP/UDP counters.");
    None
}
