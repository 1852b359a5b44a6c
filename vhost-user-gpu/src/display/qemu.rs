//! QEMU's vhost-user-gpu display protocol (`docs/interop/vhost-user-gpu.rst`).
//!
//! When QEMU plugs this backend in as `vhost-user-gpu-pci`, it hands over a socket with
//! `VHOST_USER_GPU_SET_SOCKET` (at the guest's DRIVER_OK) and shows what the backend sends on
//! it: `SCANOUT` + `UPDATE` (pixels in `PIXMAN_x8r8g8b8`), or `DMABUF_SCANOUT(2)` +
//! `DMABUF_UPDATE` for dma-buf scanouts, and `CURSOR_POS(_HIDE)` / `CURSOR_UPDATE`.
//!
//! Messages are framed by `vhost::vhost_user::GpuBackend`. QEMU reads this socket only in its
//! main loop, so nothing may be sent while QEMU waits for one of our replies on the vhost-user
//! socket: a reply it must answer (`GET_PROTOCOL_FEATURES`, `GET_DISPLAY_INFO`, `GET_EDID`,
//! `DMABUF_UPDATE`) would never come, and a large `UPDATE` could fill the socket buffer. The
//! sink therefore talks to QEMU only from the queue thread
//! ([`crate::queue_thread::QueueThreadScope`]): the handshake runs lazily on first use
//! there, and a scanout change made from elsewhere (the device applying a new sink or a reset
//! on the connection thread) is remembered and sent on the next queue-thread call.
//!
//! The protocol feature bits are decoded here (`VHOST_USER_GPU_PROTOCOL_F_EDID` = bit 0,
//! `_DMABUF2` = bit 1): the `vhost` crate's `VhostUserGpuProtocolFeatures` declares the bit
//! numbers as if they were masks.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuDMABUFScanout,
    VhostUserGpuDMABUFScanout2, VhostUserGpuEdidRequest, VhostUserGpuScanout, VhostUserGpuUpdate,
    VirtioGpuRespDisplayInfo, VirtioGpuRespGetEdid,
};
use vhost::vhost_user::message::VhostUserU64;
use vhost::vhost_user::GpuBackend;

use crate::device::ports::{Cursor, DisplaySink, DmabufScanout, Frame, CURSOR_BYTES};
use crate::device::MAX_SCANOUT_SIDE;
use crate::display::pixels;
use crate::guest_log::guest_warn;
use crate::protocol::{fourcc, Rect};
use crate::queue_thread::in_queue_thread;

/// `VHOST_USER_GPU_PROTOCOL_F_EDID`: the frontend answers `GET_EDID`.
pub const PROTOCOL_F_EDID: u64 = 1 << 0;
/// `VHOST_USER_GPU_PROTOCOL_F_DMABUF2`: the frontend takes `DMABUF_SCANOUT2` (with modifier).
pub const PROTOCOL_F_DMABUF2: u64 = 1 << 1;
/// The protocol features this sink can use.
pub const SUPPORTED_PROTOCOL_FEATURES: u64 = PROTOCOL_F_EDID | PROTOCOL_F_DMABUF2;

/// What QEMU currently shows on a scanout, as far as this sink told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanoutState {
    /// `SCANOUT` sent with this size; updates carry pixels.
    Pixels {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// `DMABUF_SCANOUT` sent; updates are `DMABUF_UPDATE`.
    Dmabuf,
}

/// What a display channel's QEMU side knows (negotiated features, what each scanout
/// shows) and what was not sent yet: the live upgrade hands it to the new process, whose
/// sink goes on from there without a second handshake QEMU would not expect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelState {
    /// Negotiated protocol features, once the handshake ran.
    pub features: Option<u64>,
    /// What QEMU shows on each scanout.
    pub scanouts: BTreeMap<u32, ScanoutState>,
    /// Scanout changes requested outside the queue thread, sent on the next call from it.
    pub pending_modes: BTreeMap<u32, Option<(u32, u32)>>,
    /// Whether the channel failed (nothing more is sent on it).
    pub broken: bool,
}

/// A copy of a [`QemuDisplay`]'s [`ChannelState`], kept up to date by the sink (it changes
/// only on a handshake or a scanout change, never per frame).
pub type ChannelRecord = Arc<Mutex<ChannelState>>;

/// A [`DisplaySink`] speaking QEMU's vhost-user-gpu display protocol.
pub struct QemuDisplay {
    channel: GpuBackend,
    /// Negotiated protocol features, once the handshake ran.
    features: Option<u64>,
    scanouts: BTreeMap<u32, ScanoutState>,
    /// Scanout changes requested outside the queue thread, sent on the next call from it.
    pending_modes: BTreeMap<u32, Option<(u32, u32)>>,
    /// Set after the first send error: the channel is gone, stop talking (logged once).
    broken: bool,
    record: ChannelRecord,
}

impl QemuDisplay {
    /// Wraps the channel from `VHOST_USER_GPU_SET_SOCKET`. Sends nothing yet.
    pub fn new(channel: GpuBackend) -> Self {
        Self::restored(channel, ChannelState::default())
    }

    /// Wraps a channel whose QEMU side is in `state` (live upgrade). Sends nothing.
    pub fn restored(channel: GpuBackend, state: ChannelState) -> Self {
        QemuDisplay {
            channel,
            features: state.features,
            scanouts: state.scanouts.clone(),
            pending_modes: state.pending_modes.clone(),
            broken: state.broken,
            record: Arc::new(Mutex::new(state)),
        }
    }

    /// The record of this sink's channel state.
    pub fn record(&self) -> ChannelRecord {
        self.record.clone()
    }

    /// Copies the channel state to the record.
    fn publish(&self) {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        record.features = self.features;
        record.broken = self.broken;
        if record.scanouts != self.scanouts {
            record.scanouts.clone_from(&self.scanouts);
        }
        if record.pending_modes != self.pending_modes {
            record.pending_modes.clone_from(&self.pending_modes);
        }
    }

    /// Runs the protocol feature handshake if it has not run yet; returns the negotiated
    /// features (0 if the channel is broken, or when called outside the queue thread before
    /// the handshake ran).
    pub fn negotiate(&mut self) -> u64 {
        if let Some(features) = self.features {
            return features;
        }
        if self.broken || !in_queue_thread() {
            return 0;
        }
        let result = self.channel.get_protocol_features().and_then(|offered| {
            let offered = offered.value;
            let agreed = offered & SUPPORTED_PROTOCOL_FEATURES;
            self.channel.set_protocol_features(&VhostUserU64::new(agreed))?;
            log::info!(
                "display: QEMU offers protocol features {offered:#x}, using {agreed:#x} (edid: {}, dmabuf2: {})",
                agreed & PROTOCOL_F_EDID != 0,
                agreed & PROTOCOL_F_DMABUF2 != 0
            );
            Ok(agreed)
        });
        match result {
            Ok(agreed) => {
                self.features = Some(agreed);
                self.publish();
                agreed
            }
            Err(e) => {
                self.fail("protocol handshake", &e);
                0
            }
        }
    }

    /// Asks QEMU for its preferred display configuration (`GET_DISPLAY_INFO`). Queue thread
    /// only.
    pub fn display_info(&mut self) -> io::Result<VirtioGpuRespDisplayInfo> {
        self.negotiate();
        self.check()?;
        self.channel.get_display_info()
    }

    /// Asks QEMU for a scanout's EDID (`GET_EDID`); needs the EDID protocol feature.
    pub fn edid(&mut self, scanout_id: u32) -> io::Result<VirtioGpuRespGetEdid> {
        if self.negotiate() & PROTOCOL_F_EDID == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "frontend has no EDID protocol feature",
            ));
        }
        self.check()?;
        self.channel
            .get_edid(&VhostUserGpuEdidRequest { scanout_id })
    }

    fn check(&self) -> io::Result<()> {
        if !in_queue_thread() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the display channel is only used from the queue thread",
            ));
        }
        if self.broken {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "display channel closed",
            ))
        } else {
            Ok(())
        }
    }

    fn fail(&mut self, what: &str, e: &io::Error) {
        if self.broken {
            return;
        }
        self.broken = true;
        self.publish();
        // QEMU closes the channel when the guest resets or stops the device (the queue may
        // still be draining then): that is the normal end of a channel, not a fault. The
        // vhost crate reports it only as text ("socket is broken").
        if e.to_string().contains("socket is broken") {
            log::info!("display: QEMU closed the display channel ({what} not delivered)");
        } else {
            log::warn!(
                "display: {what} failed: {e}; no more output to QEMU's display on this channel"
            );
        }
    }

    /// Whether this call may talk to QEMU (queue thread, handshake done, channel alive);
    /// sends scanout changes remembered from other threads first.
    fn ready(&mut self) -> bool {
        if !in_queue_thread() {
            return false;
        }
        self.negotiate();
        if !self.pending_modes.is_empty() {
            for (id, mode) in std::mem::take(&mut self.pending_modes) {
                if self.broken {
                    break;
                }
                self.apply_scanout(id, mode);
            }
            self.publish();
        }
        !self.broken
    }

    fn apply_scanout(&mut self, scanout_id: u32, mode: Option<(u32, u32)>) {
        match mode {
            Some((width, height)) => {
                self.send_scanout(scanout_id, width, height);
                self.scanouts
                    .insert(scanout_id, ScanoutState::Pixels { width, height });
            }
            None => {
                if self.scanouts.remove(&scanout_id) == Some(ScanoutState::Dmabuf) {
                    let msg = VhostUserGpuDMABUFScanout {
                        scanout_id,
                        ..Default::default()
                    };
                    if let Err(e) = self
                        .channel
                        .set_dmabuf_scanout(&msg, None::<&std::fs::File>)
                    {
                        self.fail("DMABUF_SCANOUT (disable)", &e);
                    }
                } else {
                    self.send_scanout(scanout_id, 0, 0);
                }
            }
        }
    }

    /// Whether QEMU may be asked for a `width`x`height` surface: never larger than a
    /// scanout the device accepts ([`MAX_SCANOUT_SIDE`] a side). QEMU allocates what it is
    /// told; the device refuses larger scanouts before they get here, and this sink checks
    /// again rather than trust every caller.
    fn size_allowed(what: &str, scanout_id: u32, width: u32, height: u32) -> bool {
        if width <= MAX_SCANOUT_SIDE && height <= MAX_SCANOUT_SIDE {
            return true;
        }
        guest_warn!(
            "display: {what} {width}x{height} for scanout {scanout_id} is larger than \
             {MAX_SCANOUT_SIDE}x{MAX_SCANOUT_SIDE}; not sent to QEMU"
        );
        false
    }

    /// Sends `SCANOUT` with the given size (0x0 disables).
    fn send_scanout(&mut self, scanout_id: u32, width: u32, height: u32) {
        if !Self::size_allowed("SCANOUT", scanout_id, width, height) {
            return;
        }
        let msg = VhostUserGpuScanout {
            scanout_id,
            width,
            height,
        };
        if let Err(e) = self.channel.set_scanout(&msg) {
            self.fail("SCANOUT", &e);
        }
    }
}

impl DisplaySink for QemuDisplay {
    /// The update converted to QEMU's pixel format, while it is sent.
    fn frame_copies(&self) -> u32 {
        1
    }

    fn scanout(&mut self, scanout_id: u32, mode: Option<(u32, u32)>) {
        if !in_queue_thread() {
            self.pending_modes.insert(scanout_id, mode);
            self.publish();
            return;
        }
        if self.ready() {
            self.apply_scanout(scanout_id, mode);
            self.publish();
        }
    }

    fn flush(&mut self, scanout_id: u32, frame: &Frame<'_>, damage: Rect) {
        if !self.ready() {
            return;
        }
        let rect = pixels::clamp_rect(damage, frame.width, frame.height);
        let update = VhostUserGpuUpdate {
            scanout_id,
            x: rect.x,
            y: rect.y,
            width: rect.width,
            height: rect.height,
        };
        if self.scanouts.get(&scanout_id) == Some(&ScanoutState::Dmabuf) {
            if let Err(e) = self.channel.update_dmabuf_scanout(&update) {
                self.fail("DMABUF_UPDATE", &e);
            }
            return;
        }
        // QEMU composes UPDATE into the surface made by SCANOUT: make sure it exists and has
        // the frame's size, or QEMU would draw into nothing.
        let current = ScanoutState::Pixels {
            width: frame.width,
            height: frame.height,
        };
        if !Self::size_allowed("frame", scanout_id, frame.width, frame.height) {
            return;
        }
        if self.scanouts.get(&scanout_id) != Some(&current) {
            self.send_scanout(scanout_id, frame.width, frame.height);
            self.scanouts.insert(scanout_id, current);
            self.publish();
        }
        if rect.width == 0 || rect.height == 0 {
            return;
        }
        match pixels::to_xrgb8888(frame, rect) {
            Ok(data) => {
                if let Err(e) = self.channel.update_scanout(&update, &data) {
                    self.fail("UPDATE", &e);
                }
            }
            Err(e) => guest_warn!("display: scanout {scanout_id}: {e}; update dropped"),
        }
    }

    fn dmabuf_scanout(&mut self, scanout_id: u32, buf: &DmabufScanout<'_>) -> bool {
        if !self.ready() || !Self::size_allowed("DMABUF_SCANOUT", scanout_id, buf.width, buf.height)
        {
            return false;
        }
        let features = self.negotiate();
        let base = VhostUserGpuDMABUFScanout {
            scanout_id,
            x: 0,
            y: 0,
            width: buf.width,
            height: buf.height,
            fd_width: buf.width,
            fd_height: buf.height,
            fd_stride: buf.stride,
            fd_flags: u32::from(buf.y0_top),
            fd_drm_fourcc: buf.drm_format,
        };
        let result = if features & PROTOCOL_F_DMABUF2 != 0 {
            let msg = VhostUserGpuDMABUFScanout2 {
                dmabuf_scanout: base,
                modifier: buf.modifier,
            };
            self.channel.set_dmabuf_scanout2(&msg, Some(&buf.fd))
        } else if buf.modifier == fourcc::MOD_LINEAR || buf.modifier == fourcc::MOD_INVALID {
            // Without DMABUF2 QEMU assumes an implicit (linear) layout.
            self.channel.set_dmabuf_scanout(&base, Some(&buf.fd))
        } else {
            log::debug!(
                "display: modifier {:#x} needs DMABUF_SCANOUT2, which QEMU did not offer",
                buf.modifier
            );
            return false;
        };
        match result {
            Ok(()) => {
                self.scanouts.insert(scanout_id, ScanoutState::Dmabuf);
                self.publish();
                true
            }
            Err(e) => {
                self.fail("DMABUF_SCANOUT", &e);
                false
            }
        }
    }

    fn dmabuf_flush(&mut self, scanout_id: u32, damage: Rect) -> bool {
        if !self.ready() || self.scanouts.get(&scanout_id) != Some(&ScanoutState::Dmabuf) {
            return false;
        }
        let update = VhostUserGpuUpdate {
            scanout_id,
            x: damage.x,
            y: damage.y,
            width: damage.width,
            height: damage.height,
        };
        // QEMU answers once its GL display has drawn the buffer: the guest's next frame
        // cannot overwrite what is being shown.
        if let Err(e) = self.channel.update_dmabuf_scanout(&update) {
            self.fail("DMABUF_UPDATE", &e);
        }
        true
    }

    fn cursor_update(&mut self, cursor: &Cursor<'_>) {
        if !self.ready() {
            return;
        }
        let pos = VhostUserGpuCursorPos {
            scanout_id: cursor.scanout_id,
            x: cursor.x,
            y: cursor.y,
        };
        let result = match cursor.image.map(<&[u8; CURSOR_BYTES]>::try_from) {
            Some(Ok(data)) => self.channel.cursor_update(
                &VhostUserGpuCursorUpdate {
                    pos,
                    hot_x: cursor.hot_x,
                    hot_y: cursor.hot_y,
                },
                data,
            ),
            Some(Err(_)) => {
                guest_warn!("display: cursor image is not 64x64x4 bytes; cursor hidden");
                self.channel.cursor_pos_hide(&pos)
            }
            None => self.channel.cursor_pos_hide(&pos),
        };
        if let Err(e) = result {
            self.fail("CURSOR_UPDATE", &e);
        }
    }

    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32) {
        if !self.ready() {
            return;
        }
        if let Err(e) = self
            .channel
            .cursor_pos(&VhostUserGpuCursorPos { scanout_id, x, y })
        {
            self.fail("CURSOR_POS", &e);
        }
    }
}

#[cfg(test)]
mod tests {
    //! These tests play QEMU's side of the socket by hand, reading raw bytes, so they check
    //! the wire layout of `docs/interop/vhost-user-gpu.rst` rather than this crate's own
    //! encoder against itself.
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    use crate::queue_thread::QueueThreadScope;

    const REPLY: u32 = 0x4;

    struct FakeQemu {
        sock: UnixStream,
    }

    impl FakeQemu {
        /// Reads one message: (request, flags, payload, whether an fd came with it).
        fn read(&mut self) -> (u32, u32, Vec<u8>, Option<std::fs::File>) {
            let mut hdr = [0u8; 12];
            let (n, file) = self.sock.recv_with_fd(&mut hdr).unwrap();
            self.sock.read_exact(&mut hdr[n..]).unwrap();
            let word = |i: usize| u32::from_ne_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
            let mut payload = vec![0u8; word(2) as usize];
            self.sock.read_exact(&mut payload).unwrap();
            (word(0), word(1), payload, file)
        }

        fn reply(&mut self, request: u32, payload: &[u8]) {
            let mut msg = Vec::new();
            for w in [request, REPLY, payload.len() as u32] {
                msg.extend_from_slice(&w.to_ne_bytes());
            }
            msg.extend_from_slice(payload);
            self.sock.write_all(&msg).unwrap();
        }
    }

    fn words(payload: &[u8]) -> Vec<u32> {
        payload
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// A display whose QEMU side offered `offered` protocol features; the handshake is
    /// checked on the wire.
    fn connected(offered: u64) -> (QemuDisplay, std::thread::JoinHandle<FakeQemu>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let display = QemuDisplay::new(GpuBackend::from_stream(ours));
        let qemu = FakeQemu { sock: theirs };
        let handshake = std::thread::spawn(move || {
            let mut qemu = qemu;
            let (req, flags, payload, _) = qemu.read();
            assert_eq!(
                (req, flags, payload.len()),
                (1, 0, 0),
                "GET_PROTOCOL_FEATURES"
            );
            qemu.reply(1, &offered.to_ne_bytes());
            let (req, _, payload, _) = qemu.read();
            assert_eq!(req, 2, "SET_PROTOCOL_FEATURES");
            assert_eq!(
                u64::from_ne_bytes(payload.try_into().unwrap()),
                offered & SUPPORTED_PROTOCOL_FEATURES
            );
            qemu
        });
        (display, handshake)
    }

    #[test]
    fn scanout_update_and_cursor_messages_match_the_spec() {
        let _queue_thread = QueueThreadScope::enter();
        let (mut display, handshake) = connected(0x3 | 0x100);
        // A 2x1 XBGR8888 frame (bytes R, G, B, X): UPDATE must carry B, G, R, X.
        let data = [0x11, 0x22, 0x33, 0, 0x44, 0x55, 0x66, 0];
        let frame = Frame {
            width: 2,
            height: 1,
            stride: 8,
            drm_format: fourcc::XBGR8888,
            data: &data,
        };
        display.scanout(3, Some((2, 1)));
        let mut qemu = handshake.join().unwrap();
        assert_eq!(display.negotiate(), PROTOCOL_F_EDID | PROTOCOL_F_DMABUF2);

        let (req, flags, payload, _) = qemu.read();
        assert_eq!((req, flags), (7, 0), "SCANOUT");
        assert_eq!(words(&payload), vec![3, 2, 1]);

        display.flush(
            3,
            &frame,
            Rect {
                x: 1,
                y: 0,
                width: 5,
                height: 5,
            },
        );
        let (req, _, payload, _) = qemu.read();
        assert_eq!(req, 8, "UPDATE");
        assert_eq!(
            words(&payload[..20]),
            vec![3, 1, 0, 1, 1],
            "damage clamped to the frame"
        );
        assert_eq!(&payload[20..], &[0x66, 0x55, 0x44, 0xff]);

        display.cursor_move(3, 10, 20);
        let (req, _, payload, _) = qemu.read();
        assert_eq!((req, words(&payload)), (4, vec![3, 10, 20]), "CURSOR_POS");

        let image = vec![0x7f; CURSOR_BYTES];
        display.cursor_update(&Cursor {
            scanout_id: 3,
            x: 1,
            y: 2,
            hot_x: 5,
            hot_y: 6,
            image: Some(&image),
        });
        let (req, _, payload, _) = qemu.read();
        assert_eq!(req, 6, "CURSOR_UPDATE");
        assert_eq!(payload.len(), 20 + CURSOR_BYTES);
        assert_eq!(words(&payload[..20]), vec![3, 1, 2, 5, 6]);
        assert!(payload[20..].iter().all(|&b| b == 0x7f));

        display.cursor_update(&Cursor {
            scanout_id: 3,
            x: 1,
            y: 2,
            hot_x: 0,
            hot_y: 0,
            image: None,
        });
        let (req, _, payload, _) = qemu.read();
        assert_eq!(
            (req, words(&payload)),
            (5, vec![3, 1, 2]),
            "CURSOR_POS_HIDE"
        );

        display.scanout(3, None);
        let (req, _, payload, _) = qemu.read();
        assert_eq!(
            (req, words(&payload)),
            (7, vec![3, 0, 0]),
            "SCANOUT disable"
        );
    }

    #[test]
    fn flush_without_scanout_creates_the_surface_first() {
        let _queue_thread = QueueThreadScope::enter();
        let (mut display, handshake) = connected(0);
        let data = [0u8; 16];
        let frame = Frame {
            width: 2,
            height: 2,
            stride: 8,
            drm_format: fourcc::XRGB8888,
            data: &data,
        };
        display.flush(
            0,
            &frame,
            Rect {
                x: 0,
                y: 0,
                width: 2,
                height: 2,
            },
        );
        let mut qemu = handshake.join().unwrap();
        let (req, _, payload, _) = qemu.read();
        assert_eq!(
            (req, words(&payload)),
            (7, vec![0, 2, 2]),
            "SCANOUT before UPDATE"
        );
        let (req, _, payload, _) = qemu.read();
        assert_eq!(req, 8);
        assert_eq!(payload.len(), 20 + 16);
    }

    #[test]
    fn dmabuf_scanout2_carries_fd_and_modifier_and_updates_wait_for_ack() {
        let _queue_thread = QueueThreadScope::enter();
        let (mut display, handshake) = connected(PROTOCOL_F_DMABUF2);
        let memfd =
            rustix::fs::memfd_create("fake-dmabuf", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let buf = DmabufScanout {
            fd: memfd.as_fd(),
            width: 64,
            height: 32,
            stride: 256,
            drm_format: fourcc::XRGB8888,
            modifier: 0x0100_0000_0000_0001,
            y0_top: false,
        };
        assert!(display.dmabuf_scanout(1, &buf));
        let mut qemu = handshake.join().unwrap();
        let (req, _, payload, fd) = qemu.read();
        assert_eq!(req, 12, "DMABUF_SCANOUT2");
        assert_eq!(payload.len(), 48);
        assert_eq!(
            words(&payload[..40]),
            vec![1, 0, 0, 64, 32, 64, 32, 256, 0, fourcc::XRGB8888]
        );
        assert_eq!(
            u64::from_ne_bytes(payload[40..].try_into().unwrap()),
            0x0100_0000_0000_0001
        );
        assert!(fd.is_some(), "the dma-buf fd travels as SCM_RIGHTS");

        // DMABUF_UPDATE blocks until QEMU answers; answer from another thread.
        let answer = std::thread::spawn(move || {
            let (req, _, payload, _) = qemu.read();
            assert_eq!((req, words(&payload)), (10, vec![1, 0, 0, 64, 32]));
            qemu.reply(10, &[]);
            qemu
        });
        let frame = Frame {
            width: 64,
            height: 32,
            stride: 256,
            drm_format: fourcc::XRGB8888,
            data: &[],
        };
        display.flush(
            1,
            &frame,
            Rect {
                x: 0,
                y: 0,
                width: 64,
                height: 32,
            },
        );
        let mut qemu = answer.join().unwrap();
        assert!(!display.broken);

        display.scanout(1, None);
        let (req, _, payload, fd) = qemu.read();
        assert_eq!(req, 9, "DMABUF_SCANOUT disable");
        assert_eq!(words(&payload)[3..5], [0, 0]);
        assert!(fd.is_none());
    }

    #[test]
    fn tiled_dmabuf_is_refused_without_dmabuf2() {
        let _queue_thread = QueueThreadScope::enter();
        let (mut display, handshake) = connected(PROTOCOL_F_EDID);
        let memfd =
            rustix::fs::memfd_create("fake-dmabuf", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let buf = DmabufScanout {
            fd: memfd.as_fd(),
            width: 8,
            height: 8,
            stride: 32,
            drm_format: fourcc::XRGB8888,
            modifier: 0x0100_0000_0000_0001,
            y0_top: false,
        };
        assert!(
            !display.dmabuf_scanout(0, &buf),
            "a tiled buffer cannot be described without a modifier"
        );
        handshake.join().unwrap();
    }

    #[test]
    fn edid_and_display_info_requests() {
        let _queue_thread = QueueThreadScope::enter();
        let (mut display, handshake) = connected(PROTOCOL_F_EDID);
        display.negotiate();
        let mut qemu = handshake.join().unwrap();
        let server = std::thread::spawn(move || {
            let (req, _, payload, _) = qemu.read();
            assert_eq!((req, words(&payload)), (11, vec![2]), "GET_EDID");
            let mut resp = vec![0u8; 24 + 8 + 1024];
            resp[0..4].copy_from_slice(&0x1104u32.to_ne_bytes());
            resp[24..28].copy_from_slice(&128u32.to_ne_bytes());
            resp[32] = 0x00;
            resp[33] = 0xff;
            qemu.reply(11, &resp);
            let (req, _, payload, _) = qemu.read();
            assert_eq!((req, payload.len()), (3, 0), "GET_DISPLAY_INFO");
            let mut info = vec![0u8; 24 + 16 * 24];
            info[0..4].copy_from_slice(&0x1101u32.to_ne_bytes());
            info[24 + 8..24 + 12].copy_from_slice(&1280u32.to_ne_bytes());
            info[24 + 12..24 + 16].copy_from_slice(&800u32.to_ne_bytes());
            info[24 + 16..24 + 20].copy_from_slice(&1u32.to_ne_bytes());
            qemu.reply(3, &info);
        });
        let edid = display.edid(2).unwrap();
        assert_eq!(edid.hdr.type_, 0x1104);
        assert_eq!(edid.size, 128);
        assert_eq!(&edid.edid[..2], &[0x00, 0xff]);
        let info = display.display_info().unwrap();
        assert_eq!(info.hdr.type_, 0x1101);
        assert_eq!(
            (
                info.pmodes[0].r.width,
                info.pmodes[0].r.height,
                info.pmodes[0].enabled
            ),
            (1280, 800, 1)
        );
        server.join().unwrap();
    }

    #[test]
    fn closed_channel_is_reported_once_and_silences_the_sink() {
        let _queue_thread = QueueThreadScope::enter();
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let mut display = QemuDisplay::new(GpuBackend::from_stream(ours));
        assert_eq!(display.negotiate(), 0);
        assert!(display.broken);
        display.scanout(0, Some((4, 4)));
        display.cursor_move(0, 1, 1);
        assert!(display.display_info().is_err());
    }

    #[test]
    fn nothing_is_sent_outside_the_queue_thread_and_scanouts_are_replayed() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut display = QemuDisplay::new(GpuBackend::from_stream(ours));
        // The connection thread (say, a device reset applied there) touches the sink.
        display.scanout(0, Some((8, 8)));
        display.cursor_move(0, 1, 1);
        assert_eq!(display.negotiate(), 0);
        assert!(display.display_info().is_err());
        theirs.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            (&theirs).read(&mut byte).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "nothing reached QEMU"
        );
        theirs.set_nonblocking(false).unwrap();
        let qemu = std::thread::spawn(move || {
            let mut qemu = FakeQemu { sock: theirs };
            let (req, _, _, _) = qemu.read();
            assert_eq!(req, 1, "handshake first");
            qemu.reply(1, &0u64.to_ne_bytes());
            let (req, _, _, _) = qemu.read();
            assert_eq!(req, 2);
            let (req, _, payload, _) = qemu.read();
            assert_eq!(
                (req, words(&payload)),
                (7, vec![0, 8, 8]),
                "the remembered SCANOUT"
            );
            let (req, _, payload, _) = qemu.read();
            assert_eq!(
                (req, words(&payload)),
                (4, vec![0, 2, 3]),
                "then the call itself"
            );
        });
        let _queue_thread = QueueThreadScope::enter();
        display.cursor_move(0, 2, 3);
        qemu.join().unwrap();
    }
}
