//! QEMU's side of the vhost-user-gpu display protocol (QEMU docs/interop/vhost-user-gpu.rst).
//!
//! The frontend creates a socketpair, gives one end to the backend with
//! `VHOST_USER_GPU_SET_SOCKET` and serves the other here: it answers the requests that
//! want an answer and records what the backend displayed (scanout sizes, the pixels of
//! `UPDATE` messages composed into a framebuffer, cursor state, dma-buf scanouts).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::{Error, Result};

/// Request codes of the display protocol.
#[allow(missing_docs)]
pub mod req {
    pub const GET_PROTOCOL_FEATURES: u32 = 1;
    pub const SET_PROTOCOL_FEATURES: u32 = 2;
    pub const GET_DISPLAY_INFO: u32 = 3;
    pub const CURSOR_POS: u32 = 4;
    pub const CURSOR_POS_HIDE: u32 = 5;
    pub const CURSOR_UPDATE: u32 = 6;
    pub const SCANOUT: u32 = 7;
    pub const UPDATE: u32 = 8;
    pub const DMABUF_SCANOUT: u32 = 9;
    pub const DMABUF_UPDATE: u32 = 10;
    pub const GET_EDID: u32 = 11;
    pub const DMABUF_SCANOUT2: u32 = 12;
}

/// Protocol feature bit numbers (`VHOST_USER_GPU_PROTOCOL_F_*`).
pub const PROTOCOL_F_EDID: u32 = 0;
/// `VHOST_USER_GPU_PROTOCOL_F_DMABUF2`.
pub const PROTOCOL_F_DMABUF2: u32 = 1;
const FLAG_REPLY: u32 = 1 << 2;
const MAX_PAYLOAD: usize = 64 << 20;
/// Largest scanout side a backend may announce: the largest output mode a virtio-gpu
/// device offers here (this project's backend refuses larger scanouts).
pub const MAX_SCANOUT_SIDE: u32 = 16384;

/// What the frontend pretends its display is.
#[derive(Debug, Clone)]
pub struct DisplayConfig {
    /// Enabled outputs, each `(width, height)`; reported by `GET_DISPLAY_INFO`.
    pub outputs: Vec<(u32, u32)>,
    /// Protocol features offered (bit numbers as a mask, e.g. `1 << PROTOCOL_F_EDID`).
    pub protocol_features: u64,
}

impl Default for DisplayConfig {
    fn default() -> Self {
        Self {
            outputs: vec![(1024, 768)],
            protocol_features: 1 << PROTOCOL_F_EDID,
        }
    }
}

/// One scanout as the display sees it.
#[derive(Debug, Clone, Default)]
pub struct Scanout {
    /// Width from the last `SCANOUT` (0 = disabled, also by a `DMABUF_SCANOUT` without a
    /// dma-buf).
    pub width: u32,
    /// Height from the last `SCANOUT`.
    pub height: u32,
    /// Pixels (`x8r8g8b8` as native u32, row-major) composed from `UPDATE` messages.
    pub pixels: Vec<u32>,
    /// Number of `UPDATE` messages received for this scanout.
    pub updates: u32,
}

/// The last dma-buf scanout description received.
#[derive(Debug)]
pub struct DmabufScanout {
    /// Raw fields: scanout_id, x, y, width, height, fd_width, fd_height, stride, flags, fourcc.
    pub fields: [u32; 10],
    /// Modifier (only with `DMABUF_SCANOUT2`).
    pub modifier: Option<u64>,
    /// The dma-buf, when one was sent.
    pub fd: Option<File>,
}

/// DRM fourcc code of four ASCII characters.
const fn fourcc(c: &[u8; 4]) -> u32 {
    (c[0] as u32) | (c[1] as u32) << 8 | (c[2] as u32) << 16 | (c[3] as u32) << 24
}

/// Byte positions of red, green and blue inside one little-endian 32-bit pixel of the
/// 8-bit-per-channel RGB DRM formats, `None` for other formats.
fn rgb_bytes(drm_fourcc: u32) -> Option<[usize; 3]> {
    const XR24: u32 = fourcc(b"XR24");
    const AR24: u32 = fourcc(b"AR24");
    const XB24: u32 = fourcc(b"XB24");
    const AB24: u32 = fourcc(b"AB24");
    const BX24: u32 = fourcc(b"BX24");
    const BA24: u32 = fourcc(b"BA24");
    const RX24: u32 = fourcc(b"RX24");
    const RA24: u32 = fourcc(b"RA24");
    match drm_fourcc {
        XR24 | AR24 => Some([2, 1, 0]),
        XB24 | AB24 => Some([0, 1, 2]),
        BX24 | BA24 => Some([1, 2, 3]),
        RX24 | RA24 => Some([3, 2, 1]),
        _ => None,
    }
}

impl DmabufScanout {
    /// The visible rectangle's pixels as `x8r8g8b8` native u32, row-major (the same form
    /// as [`Scanout::pixels`]), read by mapping the received dma-buf read-only inside a
    /// `DMA_BUF_IOCTL_SYNC` read window, as a display would. Errors name what is wrong
    /// with the message (no fd, unknown format, rectangle outside the buffer).
    pub fn read_xrgb(&self) -> Result<Vec<u32>> {
        let [_, x, y, width, height, _fd_width, fd_height, stride, _flags, drm_fourcc] =
            self.fields;
        let fd = self
            .fd
            .as_ref()
            .ok_or_else(|| Error::Malformed("DMABUF_SCANOUT without a dma-buf".into()))?;
        let rgb = rgb_bytes(drm_fourcc).ok_or_else(|| {
            Error::Malformed(format!(
                "DMABUF_SCANOUT format {drm_fourcc:#010x} not supported"
            ))
        })?;
        if self.modifier.is_some_and(|m| m != 0) {
            return Err(Error::Malformed(format!(
                "DMABUF_SCANOUT2 modifier {:#x} is not linear",
                self.modifier.unwrap_or(0)
            )));
        }
        let len = rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0))
            .map_err(|e| Error::io("dma-buf size (lseek)")(e.into()))? as usize;
        let end_row = u64::from(y) + u64::from(height);
        let row_end = (u64::from(x) + u64::from(width)) * 4;
        if end_row > u64::from(fd_height)
            || row_end > u64::from(stride)
            || u64::from(stride) * u64::from(fd_height) > len as u64
        {
            return Err(Error::Malformed(format!(
                "DMABUF_SCANOUT {x},{y} {width}x{height} (stride {stride}, fd height \
                 {fd_height}) does not fit a dma-buf of {len} bytes"
            )));
        }
        // A display brackets CPU reads with DMA_BUF_IOCTL_SYNC; a memfd (unit tests) has
        // no such ioctl, which is fine for reading it.
        let _sync = dmabuf_info::SyncGuard::begin(fd.as_fd(), dmabuf_info::SyncAccess::Read).ok();
        // A read-only shared mapping, read only through volatile copies (the backend or the
        // guest may write the buffer at any time).
        let file = fd
            .try_clone()
            .map_err(Error::io("dup of the scanout dma-buf"))?;
        let mapping = MmapRegion::<()>::build(
            Some(FileOffset::new(file, 0)),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
        )
        .map_err(|e| Error::Malformed(format!("mmap of the scanout dma-buf: {e}")))?;
        let mut out = Vec::with_capacity(width as usize * height as usize);
        let mut line = vec![0u8; width as usize * 4];
        for row in y as usize..end_row as usize {
            mapping
                .get_slice(row * stride as usize + x as usize * 4, line.len())
                .map_err(|e| Error::Malformed(format!("scanout row {row}: {e}")))?
                .copy_to(&mut line);
            out.extend(line.chunks_exact(4).map(|p| {
                u32::from(p[rgb[0]]) << 16 | u32::from(p[rgb[1]]) << 8 | u32::from(p[rgb[2]])
            }));
        }
        Ok(out)
    }
}

/// Cursor as the display sees it.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// Scanout, x, y of the last position.
    pub pos: (u32, u32, u32),
    /// Whether visible.
    pub visible: bool,
    /// Hotspot of the last shape.
    pub hot: (u32, u32),
    /// 64x64 ARGB shape of the last `CURSOR_UPDATE`.
    pub image: Vec<u32>,
    /// Number of `CURSOR_UPDATE` messages.
    pub updates: u32,
}

/// Everything the display received.
#[derive(Debug, Default)]
pub struct DisplayState {
    /// Request codes in arrival order.
    pub requests: Vec<u32>,
    /// Protocol features the backend enabled.
    pub protocol_features: Option<u64>,
    /// Scanouts by id.
    pub scanouts: BTreeMap<u32, Scanout>,
    /// The last dma-buf scanout per scanout id.
    pub dmabuf_scanouts: BTreeMap<u32, DmabufScanout>,
    /// Number of `DMABUF_UPDATE` messages.
    pub dmabuf_updates: u32,
    /// Cursor state.
    pub cursor: Cursor,
    /// Protocol violations seen (unknown request, update outside the scanout, ...).
    pub violations: Vec<String>,
    /// Whether the backend closed the socket.
    pub closed: bool,
}

struct Shared {
    state: Mutex<DisplayState>,
    changed: Condvar,
}

/// The display server thread and its recorded state.
pub struct DisplayServer {
    shared: Arc<Shared>,
    stream: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl DisplayServer {
    /// Starts serving; returns the server and the backend's end of the socket.
    pub fn start(config: DisplayConfig) -> Result<(Self, OwnedFd)> {
        let (ours, theirs) = UnixStream::pair().map_err(Error::io("display socketpair"))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(DisplayState::default()),
            changed: Condvar::new(),
        });
        let stream = ours
            .try_clone()
            .map_err(Error::io("clone display socket"))?;
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("display".into())
            .spawn(move || serve(ours, &config, &thread_shared))
            .map_err(Error::io("spawn display thread"))?;
        Ok((
            Self {
                shared,
                stream,
                thread: Some(thread),
            },
            theirs.into(),
        ))
    }

    /// Locks and returns the recorded state.
    pub fn state(&self) -> MutexGuard<'_, DisplayState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `pred` holds (the display socket is separate from the virtqueues, so
    /// messages can arrive after the command that caused them completed). `timeout` is a
    /// hang guard; returns whether `pred` became true.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&DisplayState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            if pred(&state) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || state.closed {
                return pred(&state);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl Drop for DisplayServer {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i * 4..i * 4 + 4)
        .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn reply(stream: &mut UnixStream, request: u32, payload: &[u8]) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(12 + payload.len());
    msg.extend_from_slice(&request.to_ne_bytes());
    msg.extend_from_slice(&FLAG_REPLY.to_ne_bytes());
    msg.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    msg.extend_from_slice(payload);
    stream.write_all(&msg)
}

/// A made-up but valid 128-byte EDID base block for `width`x`height`.
pub fn edid_for(width: u32, height: u32) -> Vec<u8> {
    let mut e = vec![0u8; 128];
    e[..8].copy_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    e[8..10].copy_from_slice(&[0x59, 0x8e]); // manufacturer "VUG"
    e[18] = 1; // version 1.4
    e[19] = 4;
    e[21] = (width / 10).min(255) as u8; // cm
    e[22] = (height / 10).min(255) as u8;
    // First detailed timing descriptor: only the active size matters here.
    let d = &mut e[54..72];
    d[0] = 0x01; // non-zero pixel clock
    d[1] = 0x1d;
    d[2] = (width & 0xff) as u8;
    d[4] = (((width >> 8) & 0xf) << 4) as u8;
    d[5] = (height & 0xff) as u8;
    d[7] = (((height >> 8) & 0xf) << 4) as u8;
    let sum: u8 = e[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

fn display_info_payload(config: &DisplayConfig) -> Vec<u8> {
    // struct virtio_gpu_resp_display_info: ctrl_hdr + 16 x (rect, enabled, flags)
    let mut p = vec![0u8; 24 + 16 * 24];
    p[0..4].copy_from_slice(&crate::gpu::ty::OK_DISPLAY_INFO.to_le_bytes());
    for (i, &(w, h)) in config.outputs.iter().take(16).enumerate() {
        let o = 24 + i * 24;
        p[o + 8..o + 12].copy_from_slice(&w.to_le_bytes());
        p[o + 12..o + 16].copy_from_slice(&h.to_le_bytes());
        p[o + 16..o + 20].copy_from_slice(&1u32.to_le_bytes());
    }
    p
}

fn serve(mut stream: UnixStream, config: &DisplayConfig, shared: &Shared) {
    let result = serve_loop(&mut stream, config, shared);
    if let Err(e) = result {
        log::debug!("display socket: {e}");
    }
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    state.closed = true;
    shared.changed.notify_all();
}

fn serve_loop(stream: &mut UnixStream, config: &DisplayConfig, shared: &Shared) -> Result<()> {
    loop {
        let mut hdr = [0u8; 12];
        let (n, file) = stream.recv_with_fd(&mut hdr[..]).map_err(|e| Error::Io {
            what: "display recv",
            source: e.into(),
        })?;
        if n == 0 {
            return Ok(());
        }
        stream
            .read_exact(&mut hdr[n..])
            .map_err(Error::io("display header"))?;
        let (request, size) = (u32_at(&hdr, 0), u32_at(&hdr, 2) as usize);
        if size > MAX_PAYLOAD {
            return Err(Error::Malformed(format!("display message of {size} bytes")));
        }
        let mut payload = vec![0u8; size];
        stream
            .read_exact(&mut payload)
            .map_err(Error::io("display payload"))?;
        handle(stream, config, shared, request, &payload, file)?;
    }
}

fn handle(
    stream: &mut UnixStream,
    config: &DisplayConfig,
    shared: &Shared,
    request: u32,
    p: &[u8],
    file: Option<File>,
) -> Result<()> {
    let io = Error::io("display reply");
    // Replies first, outside the state lock.
    match request {
        req::GET_PROTOCOL_FEATURES => {
            reply(stream, request, &config.protocol_features.to_ne_bytes()).map_err(io)?
        }
        req::GET_DISPLAY_INFO => {
            reply(stream, request, &display_info_payload(config)).map_err(io)?
        }
        req::GET_EDID => {
            let scanout = u32_at(p, 0) as usize;
            let (w, h) = config.outputs.get(scanout).copied().unwrap_or((1024, 768));
            let edid = edid_for(w, h);
            let mut r = vec![0u8; 24 + 8 + 1024];
            r[0..4].copy_from_slice(&crate::gpu::ty::OK_EDID.to_le_bytes());
            r[24..28].copy_from_slice(&(edid.len() as u32).to_le_bytes());
            r[32..32 + edid.len()].copy_from_slice(&edid);
            reply(stream, request, &r).map_err(io)?
        }
        req::DMABUF_UPDATE => reply(stream, request, &[]).map_err(io)?,
        _ => {}
    }
    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    st.requests.push(request);
    match request {
        req::SET_PROTOCOL_FEATURES => {
            st.protocol_features = Some(
                p.get(..8)
                    .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]))),
            )
        }
        req::SCANOUT => {
            let (id, w, h) = (u32_at(p, 0), u32_at(p, 1), u32_at(p, 2));
            // A frontend allocates the surface it is told (QEMU does): a side past what a
            // virtio-gpu device may show is a violation, never an allocation.
            let pixels = (w as usize)
                .checked_mul(h as usize)
                .filter(|&n| n <= MAX_PAYLOAD && w <= MAX_SCANOUT_SIDE && h <= MAX_SCANOUT_SIDE);
            match pixels {
                Some(n) => {
                    let s = st.scanouts.entry(id).or_default();
                    s.width = w;
                    s.height = h;
                    s.pixels = vec![0; n];
                }
                None => st.violations.push(format!("SCANOUT {id} of {w}x{h}")),
            }
        }
        req::UPDATE => {
            let (id, x, y, w, h) = (
                u32_at(p, 0),
                u32_at(p, 1),
                u32_at(p, 2),
                u32_at(p, 3),
                u32_at(p, 4),
            );
            let data = &p[p.len().min(20)..];
            let violation = compose(&mut st, id, (x, y, w, h), data);
            if let Some(v) = violation {
                st.violations.push(v);
            }
        }
        req::CURSOR_POS | req::CURSOR_POS_HIDE => {
            st.cursor.pos = (u32_at(p, 0), u32_at(p, 1), u32_at(p, 2));
            st.cursor.visible = request == req::CURSOR_POS;
        }
        req::CURSOR_UPDATE => {
            st.cursor.pos = (u32_at(p, 0), u32_at(p, 1), u32_at(p, 2));
            st.cursor.hot = (u32_at(p, 3), u32_at(p, 4));
            st.cursor.visible = true;
            st.cursor.updates += 1;
            st.cursor.image = (5..5 + 64 * 64).map(|i| u32_at(p, i)).collect();
            if p.len() != 20 + 64 * 64 * 4 {
                st.violations
                    .push(format!("CURSOR_UPDATE of {} bytes", p.len()));
            }
        }
        req::DMABUF_SCANOUT | req::DMABUF_SCANOUT2 => {
            let mut fields = [0u32; 10];
            for (i, f) in fields.iter_mut().enumerate() {
                *f = u32_at(p, i);
            }
            let modifier = (request == req::DMABUF_SCANOUT2).then(|| {
                p.get(40..48)
                    .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
            });
            // Without a dma-buf the message disables the scanout (QEMU then disables its
            // console's GL scanout): the scanout shows nothing, as after `SCANOUT` 0x0.
            if file.is_none() {
                if let Some(s) = st.scanouts.get_mut(&fields[0]) {
                    s.width = 0;
                    s.height = 0;
                    s.pixels.clear();
                }
            }
            st.dmabuf_scanouts.insert(
                fields[0],
                DmabufScanout {
                    fields,
                    modifier,
                    fd: file,
                },
            );
        }
        req::DMABUF_UPDATE => st.dmabuf_updates += 1,
        req::GET_PROTOCOL_FEATURES | req::GET_DISPLAY_INFO | req::GET_EDID => {}
        other => st.violations.push(format!("unknown request {other}")),
    }
    shared.changed.notify_all();
    Ok(())
}

fn compose(st: &mut DisplayState, id: u32, r: (u32, u32, u32, u32), data: &[u8]) -> Option<String> {
    let (x, y, w, h) = r;
    let Some(s) = st.scanouts.get_mut(&id) else {
        return Some(format!("UPDATE for scanout {id} that was never set"));
    };
    s.updates += 1;
    let fits = x.checked_add(w).is_some_and(|e| e <= s.width)
        && y.checked_add(h).is_some_and(|e| e <= s.height);
    if !fits {
        return Some(format!(
            "UPDATE {x},{y} {w}x{h} outside scanout {}x{}",
            s.width, s.height
        ));
    }
    if data.len() != (w as usize) * (h as usize) * 4 {
        return Some(format!(
            "UPDATE {w}x{h} with {} bytes of pixels",
            data.len()
        ));
    }
    for row in 0..h as usize {
        for col in 0..w as usize {
            let px = u32_at(data, row * w as usize + col);
            s.pixels[(y as usize + row) * s.width as usize + x as usize + col] = px;
        }
    }
    None
}

impl AsRawFd for DisplayServer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edid_block_is_valid() {
        let e = edid_for(1920, 1080);
        assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u32::from(e[56]) | (u32::from(e[58] >> 4) << 8), 1920);
    }

    /// A backend-side exchange over a real socketpair: features, display info, an update.
    #[test]
    fn dmabuf_scanout_pixels_are_read_from_the_fd() {
        // A memfd stands in for the dma-buf here (same mmap semantics); 4x2 XB24 image
        // at stride 32, of which the 2x1 rectangle at (1,1) is shown.
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut data = vec![0u8; 4096];
        data[32 + 4..32 + 8].copy_from_slice(&[0x11, 0x22, 0x33, 0xff]);
        data[32 + 8..32 + 12].copy_from_slice(&[0x44, 0x55, 0x66, 0xff]);
        let file = File::from(fd);
        (&file).write_all(&data).unwrap();
        let scanout = DmabufScanout {
            fields: [0, 1, 1, 2, 1, 4, 2, 32, 0, fourcc(b"XB24")],
            modifier: None,
            fd: Some(file),
        };
        assert_eq!(scanout.read_xrgb().unwrap(), vec![0x112233, 0x445566]);
        let outside = DmabufScanout {
            fields: [0, 3, 1, 2, 1, 4, 2, 32, 0, fourcc(b"XB24")],
            ..scanout
        };
        assert!(
            outside.read_xrgb().is_ok(),
            "x+w = 5 pixels = 20 bytes < stride 32"
        );
        let too_tall = DmabufScanout {
            fields: [0, 0, 1, 2, 2, 4, 2, 32, 0, fourcc(b"XB24")],
            ..outside
        };
        assert!(too_tall.read_xrgb().is_err());
    }

    #[test]
    fn serves_the_protocol() {
        let (server, theirs) = DisplayServer::start(DisplayConfig::default()).unwrap();
        let mut backend = UnixStream::from(theirs);
        let send = |s: &mut UnixStream, req: u32, payload: &[u8]| {
            let mut m = Vec::new();
            m.extend_from_slice(&req.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
            m.extend_from_slice(payload);
            s.write_all(&m).unwrap();
        };
        let recv = |s: &mut UnixStream| {
            let mut h = [0u8; 12];
            s.read_exact(&mut h).unwrap();
            let mut p = vec![0u8; u32_at(&h, 2) as usize];
            s.read_exact(&mut p).unwrap();
            (u32_at(&h, 0), u32_at(&h, 1), p)
        };
        send(&mut backend, req::GET_PROTOCOL_FEATURES, &[]);
        let (r, flags, p) = recv(&mut backend);
        assert_eq!(
            (r, flags & FLAG_REPLY),
            (req::GET_PROTOCOL_FEATURES, FLAG_REPLY)
        );
        assert_eq!(p, (1u64 << PROTOCOL_F_EDID).to_ne_bytes());
        send(&mut backend, req::GET_DISPLAY_INFO, &[]);
        let (_, _, p) = recv(&mut backend);
        assert_eq!(p.len(), 408);
        assert_eq!(
            (u32_at(&p, 8), u32_at(&p, 9), u32_at(&p, 10)),
            (1024, 768, 1)
        );
        let words = |v: &[u32]| v.iter().flat_map(|w| w.to_ne_bytes()).collect::<Vec<u8>>();
        send(&mut backend, req::SCANOUT, &words(&[0, 4, 2]));
        send(
            &mut backend,
            req::UPDATE,
            &words(&[0, 1, 1, 2, 1, 0xaa, 0xbb]),
        );
        send(
            &mut backend,
            req::UPDATE,
            &words(&[0, 3, 1, 2, 1, 0xcc, 0xdd]),
        );
        assert!(server.wait_for(Duration::from_secs(5), |st| st
            .scanouts
            .get(&0)
            .is_some_and(|s| s.updates == 2)));
        let st = server.state();
        assert_eq!(st.scanouts[&0].pixels, vec![0, 0, 0, 0, 0, 0xaa, 0xbb, 0]);
        assert_eq!(st.violations.len(), 1, "{:?}", st.violations); // second update is outside
    }
}
