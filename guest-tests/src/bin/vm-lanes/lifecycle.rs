//! The host's half of the lifecycle steps (guest side: `guest-tests lifecycle`, DESIGN in
//! `vhost-user-gpu/DESIGN-lifecycle.md`).
//!
//! - **Pause**: at each `@@VMLANE hold lifecycle N` the runner looks at the screen (it must
//!   show the guest's text), pauses and resumes the VM twice with QMP `stop`/`cont` while the
//!   guest keeps writing to its console (commands in flight), and answers. At `@@VMLANE hold
//!   redrawn N` the guest has cleared the console and written [`REDRAW_LINES`] lines: the
//!   screen must show exactly that (text at the top, nothing below), which only happens when
//!   the device still knows the console's resource after the pauses.
//! - **Reset**: a boot of its own without `-no-reboot`. The guest asks which boot it is
//!   (`@@VMLANE hold lifecycle-boot`: `1`, `2`, `3`); on boots 1 and 2 it sets up state and
//!   asks for a reset (`@@VMLANE hold reset`): after boot 1 the guest reboots itself, after
//!   boot 2 the runner sends QMP `system_reset`. Boots 2 and 3 check that the device started
//!   clean and draws.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use guest_tests::pattern::{self, Image};
use guest_tests::report::Outcome;

use crate::qmp::Qmp;
use crate::vm::HoldReply;

/// Lines the guest writes after each host action (`guest-tests lifecycle`).
pub const REDRAW_LINES: u32 = 40;
/// Height of a console text line (8x16 font).
const LINE_HEIGHT: u32 = 16;
/// Pause/resume cycles per `lifecycle N` hold.
const PAUSES_PER_ROUND: u32 = 2;
/// Boots of the reset step.
pub const RESET_BOOTS: u32 = 3;

/// How the runner sees the guest's screen.
pub enum Screen {
    /// QMP `screendump` (QEMU 10's `vhost-user-gpu-pci` carries the scanout to QEMU).
    Screendump,
    /// The backend's PNG capture of scanout 0 (QEMU 11.1's generic device has no display).
    Capture(PathBuf),
}

/// Checks the screen after a redraw: the guest's lines at the top, nothing below them (a
/// screen the device stopped updating still shows the console as it was, full of text).
pub fn redrawn(image: &Image) -> Result<(), String> {
    let text = REDRAW_LINES * LINE_HEIGHT;
    let top = image.lit_rows_in(0..text);
    // The cursor sits on the line after the text.
    let below = image.lit_rows_in(text + 2 * LINE_HEIGHT..image.height);
    if top >= (REDRAW_LINES * 6) as usize && below == 0 {
        Ok(())
    } else {
        Err(format!(
            "the screen does not show the {REDRAW_LINES} redrawn lines: {top} lit pixel rows in \
             the text area (want >= {}), {below} below it (want 0)",
            REDRAW_LINES * 6
        ))
    }
}

/// The host's side of `guest-tests lifecycle hold` for one boot.
pub struct PauseDriver {
    qmp_socket: PathBuf,
    screen: Screen,
    dir: PathBuf,
    /// One outcome per host action, in order.
    pub outcomes: Vec<(String, Outcome)>,
}

impl PauseDriver {
    /// A driver using the QMP socket `qmp_socket`, keeping its pictures in `dir`.
    pub fn new(qmp_socket: &Path, screen: Screen, dir: &Path) -> Self {
        PauseDriver {
            qmp_socket: qmp_socket.to_path_buf(),
            screen,
            dir: dir.to_path_buf(),
            outcomes: Vec::new(),
        }
    }

    fn look(&self, name: &str) -> Result<Image, String> {
        let file = self.dir.join(name);
        match &self.screen {
            Screen::Screendump => Qmp::connect(&self.qmp_socket)
                .and_then(|mut q| q.screendump_png(&file))
                .map_err(|e| format!("QMP screendump: {e}"))?,
            Screen::Capture(png) => {
                std::fs::copy(png, &file).map_err(|e| format!("{}: {e}", png.display()))?;
            }
        }
        pattern::read_png(&file).map_err(|e| format!("{}: {e}", file.display()))
    }

    fn pause_and_resume(&self) -> Result<(), String> {
        let mut qmp = Qmp::connect(&self.qmp_socket).map_err(|e| e.to_string())?;
        for _ in 0..PAUSES_PER_ROUND {
            qmp.execute("stop", serde_json::json!({}))
                .map_err(|e| format!("QMP stop: {e}"))?;
            let status = qmp
                .execute("query-status", serde_json::json!({}))
                .map_err(|e| e.to_string())?;
            if status["running"] != false {
                return Err(format!("the VM still runs after stop: {status}"));
            }
            thread::sleep(Duration::from_millis(300));
            qmp.execute("cont", serde_json::json!({}))
                .map_err(|e| format!("QMP cont: {e}"))?;
            thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }

    /// Handles a hold; `None` when it is not one of ours.
    pub fn hold(&mut self, what: &str) -> Option<HoldReply> {
        if let Some(round) = what.strip_prefix("lifecycle ") {
            let before = poll(Duration::from_secs(10), || {
                let image = self.look(&format!("before-pause-{round}.png"))?;
                if image.lit_rows() >= 60 {
                    Ok(())
                } else {
                    Err(format!(
                        "before the pause the screen shows no text ({} lit rows)",
                        image.lit_rows()
                    ))
                }
            });
            let paused = before.and_then(|()| self.pause_and_resume());
            self.outcomes.push((
                format!("round {round}: stop/cont x{PAUSES_PER_ROUND}"),
                outcome(paused),
            ));
            return Some(HoldReply::Continue);
        }
        if let Some(round) = what.strip_prefix("redrawn ") {
            let shown = poll(Duration::from_secs(15), || {
                redrawn(&self.look(&format!("after-pause-{round}.png"))?)
            });
            self.outcomes.push((
                format!("round {round}: screen redrawn after the pauses"),
                outcome(shown),
            ));
            return Some(HoldReply::Continue);
        }
        None
    }
}

/// The host's side of `guest-tests lifecycle reset` (one boot of its own).
pub struct ResetDriver {
    qmp_socket: PathBuf,
    screen: Screen,
    dir: PathBuf,
    boots: u32,
    /// One outcome per host check.
    pub outcomes: Vec<(String, Outcome)>,
}

impl ResetDriver {
    /// A driver for a boot that resets twice.
    pub fn new(qmp_socket: &Path, screen: Screen, dir: &Path) -> Self {
        ResetDriver {
            qmp_socket: qmp_socket.to_path_buf(),
            screen,
            dir: dir.to_path_buf(),
            boots: 0,
            outcomes: Vec::new(),
        }
    }

    /// How many boots the guest reported.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Handles a hold.
    pub fn hold(&mut self, what: &str) -> HoldReply {
        match what {
            "lifecycle-boot" => {
                self.boots += 1;
                HoldReply::Line(self.boots.to_string())
            }
            // Boot 1: the guest reboots itself.
            "reset" if self.boots == 1 => HoldReply::Line("reboot".into()),
            "reset" => {
                let reset = Qmp::connect(&self.qmp_socket)
                    .and_then(|mut q| q.execute("system_reset", serde_json::json!({})))
                    .map(drop)
                    .map_err(|e| format!("QMP system_reset: {e}"));
                self.outcomes.push((
                    format!("boot {}: QMP system_reset", self.boots),
                    outcome(reset),
                ));
                HoldReply::Nothing
            }
            redraw if redraw.starts_with("redrawn") => {
                let boot = self.boots;
                let shown = poll(Duration::from_secs(15), || {
                    let file = self.dir.join(format!("after-reset-boot-{boot}.png"));
                    match &self.screen {
                        Screen::Screendump => Qmp::connect(&self.qmp_socket)
                            .and_then(|mut q| q.screendump_png(&file))
                            .map_err(|e| format!("QMP screendump: {e}"))?,
                        Screen::Capture(png) => {
                            std::fs::copy(png, &file)
                                .map_err(|e| format!("{}: {e}", png.display()))?;
                        }
                    }
                    redrawn(&pattern::read_png(&file).map_err(|e| e.to_string())?)
                });
                self.outcomes.push((
                    format!("boot {boot}: console drawn after the reset"),
                    outcome(shown),
                ));
                HoldReply::Continue
            }
            _ => HoldReply::Continue,
        }
    }
}

fn outcome(result: Result<(), String>) -> Outcome {
    match result {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(e),
    }
}

/// Runs `attempt` until it succeeds or `limit` passes; returns the last result.
fn poll(limit: Duration, mut attempt: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let result = attempt();
        if result.is_ok() || std::time::Instant::now() >= deadline {
            return result;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(lines: u32) -> Image {
        let (width, height) = (64u32, 800u32);
        let mut pixels = vec![0u32; (width * height) as usize];
        for line in 0..lines {
            for y in line * LINE_HEIGHT + 3..line * LINE_HEIGHT + 13 {
                pixels[(y * width + 5) as usize] = 0xaaaaaa;
            }
        }
        Image {
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn a_redraw_shows_the_lines_and_nothing_below() {
        assert!(redrawn(&screen(REDRAW_LINES)).is_ok());
        // A console that was not redrawn (full of older text) or shows too little fails.
        assert!(redrawn(&screen(50)).is_err());
        assert!(redrawn(&screen(3)).is_err());
    }
}
