//! Booting one guest under QEMU (TCG) with a deadline, and reading its results.
//!
//! The guest has two serial ports: ttyS0 is the kernel console (written to
//! `console.log`), ttyS1 is the results channel, a UNIX socket the runner reads
//! line by line (copied to `results.log`). The guest's `/init` frames each step
//! with `@@VMLANE step NAME` / `@@VMLANE end NAME rc=N` and ends with
//! `@@VMLANE done`. A step that needs the host to look at the guest (for example a
//! QMP screendump while the KMS pattern is on screen) prints `@@VMLANE hold WHAT`
//! and waits for one line back on the same port.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;

/// How to start QEMU.
pub enum Qemu {
    /// The system's QEMU 10.0.
    System(PathBuf),
    /// QEMU 11.1 inside the trixie root, run through `chroot` in a private
    /// mount namespace where `/dev`, `/proc` and the lane directory are
    /// bind-mounted into the root.
    Chroot(PathBuf),
}

/// One guest boot.
pub struct Boot<'a> {
    /// Which QEMU.
    pub qemu: &'a Qemu,
    /// The lane's work directory (sockets, logs); shared with a chroot.
    pub dir: &'a Path,
    /// Kernel image.
    pub kernel: &'a Path,
    /// The initramfs (must live inside `dir`, which a chroot sees).
    pub initramfs: &'a Path,
    /// Extra QEMU arguments (devices, memory backend).
    pub extra: Vec<String>,
    /// Extra environment for QEMU (for example `DISPLAY` for a GL display).
    pub env: Vec<(String, String)>,
    /// The whole boot must end before this.
    pub timeout: Duration,
    /// A guest reset reboots it (the reset lanes) instead of ending QEMU (`-no-reboot`).
    pub allow_reboot: bool,
}

/// What the guest printed on its results port.
pub struct Transcript {
    /// Every line, in order.
    pub lines: Vec<String>,
    /// Whether `@@VMLANE done` arrived.
    pub finished: bool,
}

/// What the runner answers a `@@VMLANE hold WHAT`.
pub enum HoldReply {
    /// `continue`.
    Continue,
    /// This line.
    Line(String),
    /// Nothing: the host reset the guest, which will never read an answer (one written now
    /// would be read by the next boot instead).
    Nothing,
}

/// Called for each `@@VMLANE hold WHAT`; the guest continues once it gets the reply.
pub type HoldHandler<'a> = dyn FnMut(&str) -> HoldReply + 'a;

impl Boot<'_> {
    fn command(&self, args: &[String]) -> Command {
        match self.qemu {
            Qemu::System(binary) => {
                let mut cmd = Command::new(binary);
                cmd.args(args);
                cmd
            }
            Qemu::Chroot(root) => {
                let mut cmd = Command::new("unshare");
                cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
                cmd.arg(
                    "set -e; root=$1; dir=$2; shift 2; \
                     mount --rbind /dev \"$root/dev\"; \
                     mount -t proc proc \"$root/proc\"; \
                     mkdir -p \"$root$dir\"; mount --bind \"$dir\" \"$root$dir\"; \
                     exec chroot \"$root\" qemu-system-x86_64 \"$@\"",
                );
                cmd.arg("vm-lanes-chroot").arg(root).arg(self.dir);
                cmd.args(args);
                cmd
            }
        }
    }

    /// Boots the guest and collects its results, calling `on_hold` for each
    /// hold request. QEMU is killed (SIGKILL) at the deadline.
    pub fn run(&self, on_hold: &mut HoldHandler<'_>) -> Result<Transcript, Error> {
        let results_sock = self.dir.join("results.sock");
        let _ = fs::remove_file(&results_sock);
        let console = self.dir.join("console.log");
        // The kernel must be visible inside a chroot too: keep a copy in the
        // lane directory, which is bind-mounted there.
        let kernel = self.dir.join("vmlinuz");
        fs::copy(self.kernel, &kernel).map_err(|e| Error::io(self.kernel, e))?;
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !self.allow_reboot {
            args.push("-no-reboot".into());
        }
        args.extend([
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            self.initramfs.display().to_string(),
            "-append".into(),
            "console=ttyS0 panic=-1 loglevel=4 rdinit=/init".into(),
            "-serial".into(),
            format!("file:{}", console.display()),
            "-chardev".into(),
            format!(
                "socket,id=results,path={},server=on,wait=on",
                results_sock.display()
            ),
            "-serial".into(),
            "chardev:results".into(),
        ]);
        args.extend(self.extra.iter().cloned());
        fs::write(self.dir.join("qemu.args"), args.join("\n"))
            .map_err(|e| Error::io(self.dir, e))?;
        let stderr =
            fs::File::create(self.dir.join("qemu.stderr")).map_err(|e| Error::io(self.dir, e))?;
        let child = self
            .command(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().map_err(|e| Error::io(self.dir, e))?)
            .stderr(stderr)
            .spawn()
            .map_err(|e| Error::Setup(format!("cannot start QEMU: {e}")))?;
        let mut guard = KillOnDrop(child);
        let deadline = Instant::now() + self.timeout;

        // QEMU waits (wait=on) until we connect to the results port.
        let stream = loop {
            match UnixStream::connect(&results_sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    if let Some(status) = guard.0.try_wait().map_err(|e| Error::io(self.dir, e))? {
                        return Err(Error::Lane(format!(
                            "QEMU exited ({status}) before the guest started; see {}",
                            self.dir.join("qemu.stderr").display()
                        )));
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(Error::Lane(format!("results port never opened: {e}"))),
            }
        };
        let mut writer = stream.try_clone().map_err(|e| Error::io(self.dir, e))?;
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let mut log =
            fs::File::create(self.dir.join("results.log")).map_err(|e| Error::io(self.dir, e))?;
        let mut transcript = Transcript {
            lines: Vec::new(),
            finished: false,
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
                Ok(line) => {
                    let line = line.trim_end_matches('\r').to_string();
                    let _ = writeln!(log, "{line}");
                    if let Some(what) = line.strip_prefix("@@VMLANE hold ") {
                        match on_hold(what.trim()) {
                            HoldReply::Continue => {
                                let _ = writer.write_all(b"continue\n");
                            }
                            HoldReply::Line(reply) => {
                                let _ = writer.write_all(format!("{reply}\n").as_bytes());
                            }
                            HoldReply::Nothing => {}
                        }
                    }
                    if line.trim() == "@@VMLANE done" {
                        transcript.finished = true;
                    }
                    transcript.lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // After `done` the guest powers off; give it a moment, then make sure.
        let grace = Instant::now() + Duration::from_secs(10);
        while Instant::now() < grace {
            if guard.0.try_wait().ok().flatten().is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if !transcript.finished {
            transcript.lines.push(format!(
                "@@VMLANE runner: the guest did not finish within {} s",
                self.timeout.as_secs()
            ));
        }
        Ok(transcript)
    }
}

/// Kills (SIGKILL) and reaps the child when dropped: a QEMU stuck on a
/// vhost-user reply ignores SIGTERM.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}
