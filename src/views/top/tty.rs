//! The terminal side of `top`: keys parsed from the terminal's bytes, raw mode and the
//! alternate screen, and the signal handlers that restore the terminal when the loop cannot.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ratatui::crossterm::{cursor, execute, terminal};

/// A key, as `top` understands it. Read and parsed here rather than by crossterm's event
/// reader: that reader spins forever on a closed terminal (`read` returning 0 or EIO is neither
/// "would block" nor "interrupted" to it), so `top` outlived its terminal and, stuck in that
/// loop, never looked at the SIGTERM flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    /// Ctrl-C (raw mode delivers it as a byte, not as SIGINT).
    Interrupt,
    /// Anything else: arrows, function keys, other control bytes.
    Other,
}

/// Parses what one read of the terminal returned. Escape sequences (arrows, function keys)
/// arrive whole in one read; a lone ESC is the Esc key.
pub fn parse_keys(input: &[u8]) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        i += 1;
        let key = match b {
            0x03 => Key::Interrupt,
            b'\r' | b'\n' => Key::Enter,
            0x7f | 0x08 => Key::Backspace,
            0x1b => match input.get(i) {
                // CSI: parameters and intermediates up to a final byte in 0x40..=0x7e.
                Some(b'[') => {
                    i += 1;
                    while i < input.len() && !(0x40..=0x7e).contains(&input[i]) {
                        i += 1;
                    }
                    i += 1;
                    Key::Other
                }
                // SS3: one more byte (F1-F4, arrows in application mode).
                Some(b'O') => {
                    i += 2;
                    Key::Other
                }
                _ => Key::Esc,
            },
            0x00..=0x1f => Key::Other,
            0x20..=0x7e => Key::Char(b as char),
            _ => {
                // A UTF-8 sequence: its length from the lead byte; invalid bytes are skipped.
                let len = match b {
                    0xc2..=0xdf => 2,
                    0xe0..=0xef => 3,
                    0xf0..=0xf4 => 4,
                    _ => 1,
                };
                let end = (i - 1 + len).min(input.len());
                match std::str::from_utf8(&input[i - 1..end]).ok().and_then(|s| s.chars().next()) {
                    Some(c) if len > 1 => {
                        i = end;
                        Key::Char(c)
                    }
                    _ => Key::Other,
                }
            }
        };
        keys.push(key);
    }
    keys
}

/// The signal that asked `top` to stop (0: none yet). The loop looks at it at least every
/// 200 ms, restores the terminal and exits 0.
pub(super) static SIGNALLED: AtomicI32 = AtomicI32::new(0);
/// Set by SIGWINCH: redraw at the new size.
pub(super) static RESIZED: AtomicBool = AtomicBool::new(false);
/// The terminal `top` reads and the modes it found there, for the restore that signal handlers
/// do when the loop cannot (stuck in a write to a terminal nobody reads, or in a long sweep).
pub(super) static TTY_FD: AtomicI32 = AtomicI32::new(-1);
pub(super) static SAVED_MODES: OnceLock<libc::termios> = OnceLock::new();
/// How long the loop has, after a stop signal, before the process exits from the handler.
pub(super) const GRACE_SECONDS: libc::c_uint = 2;
/// Leave the alternate screen, show the cursor.
pub(super) const LEAVE: &[u8] = b"\x1b[?1049l\x1b[?25h";

/// Restores what can be restored without blocking and exits; async-signal-safe (tcsetattr,
/// open, write, close, _exit).
pub(super) fn exit_from_handler(status: libc::c_int) -> ! {
    let fd = TTY_FD.load(Ordering::SeqCst);
    if let (true, Some(modes)) = (fd >= 0, SAVED_MODES.get()) {
        // SAFETY: fd is the terminal opened by `Tty::open` (still open: it is closed only
        // after the handlers are reset), modes a termios read from it.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, modes) };
    }
    // A fresh open file description of stdout, non-blocking, so a terminal that nobody reads
    // cannot hold the exit (the shared description's flags are left alone).
    // SAFETY: a NUL-terminated path; the fd is only written and closed here.
    unsafe {
        let out = libc::open(
            c"/proc/self/fd/1".as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if out >= 0 {
            libc::write(out, LEAVE.as_ptr().cast(), LEAVE.len());
            libc::close(out);
        }
        libc::_exit(status)
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    match sig {
        libc::SIGWINCH => RESIZED.store(true, Ordering::SeqCst),
        // The grace period is over and the loop did not come back.
        libc::SIGALRM => exit_from_handler(128 + SIGNALLED.load(Ordering::SeqCst)),
        _ => {
            // A second stop signal: no more waiting.
            if SIGNALLED.swap(sig, Ordering::SeqCst) != 0 {
                exit_from_handler(128 + sig);
            }
            // SAFETY: alarm is async-signal-safe.
            unsafe { libc::alarm(GRACE_SECONDS) };
        }
    }
}

pub(super) fn install_handlers() {
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGWINCH, libc::SIGALRM] {
        // SAFETY: a zeroed sigaction with an empty mask and a handler that only touches
        // atomics or exits through async-signal-safe calls. No SA_RESTART: a poll or read
        // returns EINTR and the loop looks at the flags at once.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Why waiting for input ended.
pub(super) enum Input {
    Keys(Vec<Key>),
    /// Timeout, a signal or a resize: look at the flags and the clock.
    Nothing,
    /// The terminal is gone (hung up, closed, EIO): restore what can be and exit.
    Gone,
}

/// The terminal `top` reads keys from: stdin when it is one, else `/dev/tty`.
pub(super) struct Tty {
    pub(super) fd: libc::c_int,
    pub(super) owned: bool,
}

impl Tty {
    pub(super) fn open() -> io::Result<Tty> {
        // SAFETY: isatty on fds 0 and 1 has no preconditions.
        if unsafe { libc::isatty(libc::STDOUT_FILENO) } != 1 {
            return Err(io::Error::other("stdout is not a terminal"));
        }
        // SAFETY: as above.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
            return Ok(Tty { fd: libc::STDIN_FILENO, owned: false });
        }
        // SAFETY: a NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("stdin is not a terminal and /dev/tty: {e}")));
        }
        Ok(Tty { fd, owned: true })
    }

    pub(super) fn modes(&self) -> io::Result<libc::termios> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a valid pointer.
        if unsafe { libc::tcgetattr(self.fd, &mut t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(t)
    }

    pub(super) fn set_modes(&self, t: &libc::termios) -> io::Result<()> {
        // SAFETY: a valid fd and termios.
        if unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `wait` for keys.
    pub(super) fn wait(&self, wait: Duration) -> Input {
        let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            return match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => Input::Nothing,
                _ => Input::Gone,
            };
        }
        if n == 0 {
            return Input::Nothing;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
            && pfd.revents & libc::POLLIN == 0
        {
            return Input::Gone;
        }
        let mut buf = [0u8; 1024];
        // SAFETY: reads into a buffer of that length.
        let got = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        match got {
            // End of file: the terminal was hung up (its other side closed).
            0 => Input::Gone,
            n if n > 0 => Input::Keys(parse_keys(&buf[..n as usize])),
            _ => match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Input::Nothing,
                // EIO and the rest: the terminal is no more.
                _ => Input::Gone,
            },
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        if self.owned {
            TTY_FD.store(-1, Ordering::SeqCst);
            // SAFETY: our own fd, closed once.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// Puts the terminal back (modes, main screen, cursor) when dropped: on return, on error and
/// on unwinding. Every step is best effort: the terminal may be gone.
pub(super) struct Restore<'a> {
    pub(super) tty: &'a Tty,
    pub(super) modes: libc::termios,
}

pub(super) fn leave_screen() {
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let _ = self.tty.set_modes(&self.modes);
        leave_screen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_terminal_bytes() {
        use Key::*;
        assert_eq!(parse_keys(b"q/ab\r"), [Char('q'), Char('/'), Char('a'), Char('b'), Enter]);
        // A lone ESC is Esc; arrows (CSI, SS3) and F5 are not Esc followed by letters.
        assert_eq!(parse_keys(b"\x1b"), [Esc]);
        assert_eq!(parse_keys(b"\x1b[A\x1bOBx\x1b[15~"), [Other, Other, Char('x'), Other]);
        assert_eq!(parse_keys(b"\x03\x7f\x08\x01"), [Interrupt, Backspace, Backspace, Other]);
        assert_eq!(parse_keys("é€".as_bytes()), [Char('é'), Char('€')]);
        // Invalid or cut UTF-8 and a cut CSI are skipped, never a panic.
        assert_eq!(parse_keys(b"\xff\xc3"), [Other, Other]);
        assert_eq!(parse_keys(b"\x1b[12"), [Other]);
        assert_eq!(parse_keys(b"\x1bO"), [Other]);
    }
}
