//! A sink that feeds several sinks (for example PNG capture and QEMU's display together).

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::device::ports::{Cursor, DisplaySink, DmabufScanout, Frame};
use crate::protocol::Rect;

/// Forwards every display event to each of its sinks, in order. With no sinks it is the
/// "no display" sink.
#[derive(Default)]
pub struct FanOut {
    sinks: Vec<Box<dyn DisplaySink>>,
    /// Per scanout: the sinks that declined the last `dmabuf_flush` and so get the pixel
    /// `flush` the device sends next (the others already showed the update).
    want_pixels: BTreeMap<u32, Vec<usize>>,
}

impl FanOut {
    /// A fan-out over `sinks`.
    pub fn new(sinks: Vec<Box<dyn DisplaySink>>) -> Self {
        FanOut {
            sinks,
            want_pixels: BTreeMap::new(),
        }
    }

    /// Adds a sink.
    pub fn push(&mut self, sink: Box<dyn DisplaySink>) {
        self.sinks.push(sink);
    }

    /// Number of sinks.
    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    /// Whether there are no sinks.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

impl DisplaySink for FanOut {
    /// What all sinks hold together.
    fn frame_copies(&self) -> u32 {
        self.sinks
            .iter()
            .map(|s| s.frame_copies())
            .fold(0, u32::saturating_add)
    }

    fn scanout(&mut self, scanout_id: u32, mode: Option<(u32, u32)>) {
        for sink in &mut self.sinks {
            sink.scanout(scanout_id, mode);
        }
    }

    fn flush(&mut self, scanout_id: u32, frame: &Frame<'_>, damage: Rect) {
        match self.want_pixels.remove(&scanout_id) {
            Some(indices) => {
                for i in indices {
                    if let Some(sink) = self.sinks.get_mut(i) {
                        sink.flush(scanout_id, frame, damage);
                    }
                }
            }
            None => {
                for sink in &mut self.sinks {
                    sink.flush(scanout_id, frame, damage);
                }
            }
        }
    }

    /// Offers the update to every sink; `false` if any of them wants pixels, and then
    /// only those get the `flush` that follows.
    fn dmabuf_flush(&mut self, scanout_id: u32, damage: Rect) -> bool {
        let declined: Vec<usize> = self
            .sinks
            .iter_mut()
            .enumerate()
            .filter_map(|(i, sink)| (!sink.dmabuf_flush(scanout_id, damage)).then_some(i))
            .collect();
        if declined.is_empty() && !self.sinks.is_empty() {
            self.want_pixels.remove(&scanout_id);
            true
        } else {
            self.want_pixels.insert(scanout_id, declined);
            false
        }
    }

    /// Offers the dma-buf to every sink. Returns `true` only if all of them took it; otherwise
    /// the device keeps sending pixel flushes, which sinks that did take the dma-buf turn
    /// into dma-buf updates, and the others draw.
    fn dmabuf_scanout(&mut self, scanout_id: u32, buf: &DmabufScanout<'_>) -> bool {
        let mut all = !self.sinks.is_empty();
        for sink in &mut self.sinks {
            let copy = DmabufScanout {
                fd: buf.fd.as_fd(),
                ..*buf
            };
            all &= sink.dmabuf_scanout(scanout_id, &copy);
        }
        all
    }

    fn cursor_update(&mut self, cursor: &Cursor<'_>) {
        for sink in &mut self.sinks {
            sink.cursor_update(cursor);
        }
    }

    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32) {
        for sink in &mut self.sinks {
            sink.cursor_move(scanout_id, x, y);
        }
    }
}

/// A sink shared between connections (the capture outlives each frontend connection).
#[derive(Clone)]
pub struct SharedSink(Arc<Mutex<Box<dyn DisplaySink>>>);

impl SharedSink {
    /// Shares `sink`.
    pub fn new(sink: impl DisplaySink + 'static) -> Self {
        SharedSink(Arc::new(Mutex::new(Box::new(sink))))
    }

    /// A shared sink that shows nothing until [`SharedSink::install`] gives it a sink (the
    /// live upgrade's capture, which may only start once the process is confined).
    pub fn later() -> Self {
        Self::new(FanOut::default())
    }

    /// Puts `sink` in place of what this shared sink had, for every holder.
    pub fn install(&self, sink: impl DisplaySink + 'static) {
        *self.lock() = Box::new(sink);
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn DisplaySink>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DisplaySink for SharedSink {
    fn frame_copies(&self) -> u32 {
        self.lock().frame_copies()
    }

    fn scanout(&mut self, scanout_id: u32, mode: Option<(u32, u32)>) {
        self.lock().scanout(scanout_id, mode);
    }

    fn flush(&mut self, scanout_id: u32, frame: &Frame<'_>, damage: Rect) {
        self.lock().flush(scanout_id, frame, damage);
    }

    fn dmabuf_scanout(&mut self, scanout_id: u32, buf: &DmabufScanout<'_>) -> bool {
        self.lock().dmabuf_scanout(scanout_id, buf)
    }

    fn dmabuf_flush(&mut self, scanout_id: u32, damage: Rect) -> bool {
        self.lock().dmabuf_flush(scanout_id, damage)
    }

    fn cursor_update(&mut self, cursor: &Cursor<'_>) {
        self.lock().cursor_update(cursor);
    }

    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32) {
        self.lock().cursor_move(scanout_id, x, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fourcc;
    use std::sync::{Arc, Mutex};

    /// Records calls; takes dma-bufs if `takes_dmabuf`.
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        takes_dmabuf: bool,
    }

    impl DisplaySink for Recorder {
        fn scanout(&mut self, id: u32, mode: Option<(u32, u32)>) {
            self.log
                .lock()
                .unwrap()
                .push(format!("scanout {id} {mode:?}"));
        }
        fn flush(&mut self, id: u32, frame: &Frame<'_>, damage: Rect) {
            self.log.lock().unwrap().push(format!(
                "flush {id} {}x{} {:?}",
                frame.width, frame.height, damage
            ));
        }
        fn dmabuf_scanout(&mut self, id: u32, _buf: &DmabufScanout<'_>) -> bool {
            self.log.lock().unwrap().push(format!("dmabuf {id}"));
            self.takes_dmabuf
        }
        fn dmabuf_flush(&mut self, id: u32, _damage: Rect) -> bool {
            self.log.lock().unwrap().push(format!("dmabuf_flush {id}"));
            self.takes_dmabuf
        }
        fn cursor_update(&mut self, c: &Cursor<'_>) {
            let (id, x, y) = (c.scanout_id, c.x, c.y);
            self.log
                .lock()
                .unwrap()
                .push(format!("cursor {id} {x},{y} {}", c.image.is_some()));
        }
        fn cursor_move(&mut self, id: u32, x: u32, y: u32) {
            self.log.lock().unwrap().push(format!("move {id} {x},{y}"));
        }
    }

    type Log = Arc<Mutex<Vec<String>>>;

    /// A fan-out to a recorder that takes dma-bufs and one that does not, and their logs.
    fn two_recorders() -> (FanOut, Log, Log) {
        let a = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::new(Mutex::new(Vec::new()));
        let fan = FanOut::new(vec![
            Box::new(Recorder {
                log: a.clone(),
                takes_dmabuf: true,
            }),
            Box::new(Recorder {
                log: b.clone(),
                takes_dmabuf: false,
            }),
        ]);
        (fan, a, b)
    }

    #[test]
    fn every_sink_sees_every_event_and_dmabuf_needs_all() {
        let (mut fan, a, b) = two_recorders();
        fan.scanout(0, Some((2, 2)));
        let data = [0u8; 16];
        let frame = Frame {
            width: 2,
            height: 2,
            stride: 8,
            drm_format: fourcc::XRGB8888,
            data: &data,
        };
        fan.flush(0, &frame, Rect::default());
        let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let buf = DmabufScanout {
            fd: memfd.as_fd(),
            width: 2,
            height: 2,
            stride: 8,
            drm_format: fourcc::XRGB8888,
            modifier: 0,
            y0_top: false,
        };
        assert!(
            !fan.dmabuf_scanout(0, &buf),
            "one sink refused: the device must keep flushing pixels"
        );
        fan.cursor_update(&Cursor {
            scanout_id: 0,
            x: 1,
            y: 2,
            hot_x: 0,
            hot_y: 0,
            image: None,
        });
        fan.cursor_move(0, 3, 4);
        let expected = vec![
            "scanout 0 Some((2, 2))".to_string(),
            format!("flush 0 2x2 {:?}", Rect::default()),
            "dmabuf 0".into(),
            "cursor 0 1,2 false".into(),
            "move 0 3,4".into(),
        ];
        assert_eq!(*a.lock().unwrap(), expected);
        assert_eq!(*b.lock().unwrap(), expected);
        assert!(
            !FanOut::default().dmabuf_scanout(0, &buf),
            "no sink: nobody shows the dma-buf"
        );
    }

    #[test]
    fn after_a_partial_dmabuf_flush_only_the_sinks_that_declined_get_pixels() {
        let (mut fan, a, b) = two_recorders();
        let damage = Rect {
            x: 0,
            y: 0,
            width: 1,
            height: 1,
        };
        assert!(!fan.dmabuf_flush(0, damage));
        let data = [0u8; 4];
        let frame = Frame {
            width: 1,
            height: 1,
            stride: 4,
            drm_format: fourcc::XRGB8888,
            data: &data,
        };
        fan.flush(0, &frame, damage);
        // A later plain flush (no dma-buf involved) reaches everyone again.
        fan.flush(0, &frame, damage);
        let flush = format!("flush 0 1x1 {damage:?}");
        assert_eq!(
            *a.lock().unwrap(),
            vec!["dmabuf_flush 0".to_string(), flush.clone()]
        );
        assert_eq!(
            *b.lock().unwrap(),
            vec!["dmabuf_flush 0".to_string(), flush.clone(), flush]
        );
    }
}
