//! The pure cgroup v2 test bed: a Debian 12 guest under QEMU (software emulation, TCG: KVM does
//! not work on the CI machines) booted with systemd and `cgroup_no_v1=all`. The image is built
//! by `scripts/v2vm/build-image.sh` (called from `scripts/testbed.sh`, which exports
//! `PODOMETER_V2VM_IMAGE`); the guest runs `/mnt/host/guest.sh` from a 9p share at boot, writes
//! its results into the share and powers off. The QEMU process is killed by pid when the guest
//! overruns its time or the test panics; the disk is opened with `snapshot=on`, so the cached
//! image never changes and QEMU's overlay goes with the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding `disk.raw`, `vmlinuz` and `initrd.img`, when the test bed built it.
pub fn image_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("PODOMETER_V2VM_IMAGE")?);
    ["disk.raw", "vmlinuz", "initrd.img"].iter().all(|f| dir.join(f).is_file()).then_some(dir)
}

/// Kills QEMU by pid if it is still running when dropped (timeout or a panicking test).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One boot of the guest: what it left in the share, and how long it took.
pub struct GuestRun {
    /// The share directory; results are under `out/`.
    pub share: PathBuf,
    /// The serial console (kernel and systemd messages), for failure messages.
    pub console: String,
    pub elapsed: Duration,
    _dir: tempfile::TempDir,
}

impl GuestRun {
    pub fn out(&self) -> PathBuf {
        self.share.join("out")
    }

    /// The end of the console and of the guest's log, for assertion messages.
    pub fn diagnostics(&self) -> String {
        let tail = |s: &str, n: usize| -> String {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let log = std::fs::read_to_string(self.out().join("guest.log")).unwrap_or_default();
        format!(
            "--- console (tail) ---\n{}\n--- guest.log (tail) ---\n{}",
            tail(&self.console, 40),
            tail(&log, 40)
        )
    }
}

/// Boots the guest with `files` (name, source path) copied into the share beside `guest.sh`, waits
/// for it to power off (at most `timeout`), and returns what it left behind.
pub fn boot(image: &Path, guest_script: &Path, files: &[(&str, &Path)], timeout: Duration) -> GuestRun {
    let dir = tempfile::Builder::new().prefix(&super::unique("v2vm")).tempdir().expect("tempdir");
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("out")).unwrap();
    std::fs::copy(guest_script, share.join("guest.sh")).expect("copy guest.sh");
    for (name, src) in files {
        std::fs::copy(src, share.join(name)).unwrap_or_else(|e| panic!("copy {src:?}: {e}"));
    }
    let console = dir.path().join("console.log");
    let started = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-no-reboot", "-display", "none", "-vga", "none", "-monitor", "none", "-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        .arg("-append")
        .arg("root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all")
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio,snapshot=on", image.join("disk.raw").display()))
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=hostshare,security_model=none,id=hs", share.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start qemu-system-x86_64");
    let mut qemu = Qemu(child);
    let status = loop {
        if let Some(status) = qemu.0.try_wait().expect("waiting for qemu") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            break None;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let mut stderr = String::new();
    if status.is_some() {
        use std::io::Read;
        let _ = qemu.0.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
    }
    drop(qemu);
    let run = GuestRun {
        share,
        console: std::fs::read_to_string(&console).unwrap_or_default(),
        elapsed: started.elapsed(),
        _dir: dir,
    };
    match status {
        None => panic!("the guest did not power off within {timeout:?}\n{}", run.diagnostics()),
        Some(s) if !s.success() => panic!("qemu exited with {s}: {stderr}\n{}", run.diagnostics()),
        Some(_) => run,
    }
}
