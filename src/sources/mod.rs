//! Sources read the host and fill a [`Sweep`]. They run one after another on the sweep
//! thread, in the order the pipeline lists them, and share a [`SweepContext`]: the cgroup
//! source publishes the containers it found there, and the network namespace source reads
//! them instead of walking the cgroup tree again.

pub mod cgroups;
pub mod netns;
pub mod processes;

use crate::model::{Sweep, SweepContext};

/// What is wrong with the text of a file the sources read (cgroup control files, procfs); the
/// file layer adds the path. Parsers are pure, so each case is tested on literal strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("key `{0}` is missing")]
    MissingKey(&'static str),
    #[error("`{text}` is not a number (key `{key}`)")]
    BadNumber { key: String, text: String },
    #[error("unexpected line `{0}`")]
    BadLine(String),
    #[error("the file is empty")]
    Empty,
    #[error("the file is not UTF-8 text")]
    NotText,
    /// A line-oriented procfs file: the 1-based line (0 when the file as a whole is wrong) and
    /// what is wrong with it.
    #[error("line {line}: {message}")]
    AtLine { line: usize, message: String },
}

impl ParseError {
    pub fn at_line(line: usize, message: impl Into<String>) -> ParseError {
        ParseError::AtLine { line, message: message.into() }
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub trait Source: Send {
    /// Adds this sweep's points. Failures of single containers (a cgroup that vanished, a file
    /// that could not be parsed) are handled inside and counted; an `Err` means the whole
    /// source produced nothing this sweep (its root is gone, say), and the pipeline logs it.
    fn collect(&mut self, ctx: &mut SweepContext, sweep: &mut Sweep) -> Result<(), BoxError>;
}

/// Whether a failed read means the process, cgroup or namespace went away meanwhile: normal on
/// a busy node, not an error. procfs answers `ESRCH` for a process that exited after its
/// directory was opened, cgroupfs `ENODEV` for a removed cgroup's open file, both `ENOENT`
/// for a path that is gone.
pub fn is_vanished(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::ESRCH))
        || e.kind() == std::io::ErrorKind::NotFound
}
