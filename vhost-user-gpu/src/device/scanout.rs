//! Scanouts and the cursor: what each output shows ([`Scanouts`]). The commands that change
//! them are in `commands/scanout.rs`.

use super::budget::Charge;
use super::reject::{reject, Reject};
use crate::protocol::{GpuError, Rect};

/// How a blob is laid out as an image on a scanout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobView {
    pub width: u32,
    pub height: u32,
    /// virtio format.
    pub format: u32,
    /// DRM fourcc (filled in when validated).
    pub drm_format: u32,
    pub stride: u32,
    pub offset: u32,
}

/// The host memory showing an image costs, charged to the guest's budget while the scanout
/// shows it: the device's packed copy of the shown rectangle (`scratch`, filled on flush and
/// kept so that flushes do not allocate) and the copies the display sinks make of each
/// frame ([`crate::device::ports::DisplaySink::frame_copies`]).
#[derive(Debug)]
pub(crate) struct FrameMemory {
    /// The device's copy of the shown rectangle, when a flush needs one (at most the
    /// rectangle's size: [`crate::device::resource::copy_rect_out`] sizes it).
    pub scratch: Vec<u8>,
    /// What the copies are charged.
    pub charge: Charge,
}

/// What a scanout shows.
#[derive(Debug)]
pub(crate) struct Shown {
    /// Where it is shown from.
    pub view: ShownView,
    /// What showing it costs.
    pub memory: FrameMemory,
}

/// Which image a scanout shows and how.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShownView {
    pub resource_id: u32,
    /// Part of the resource (2D) or blob image shown.
    pub rect: Rect,
    /// Layout, for blob scanouts.
    pub blob: Option<BlobView>,
    /// Whether the sink took the buffer as a dma-buf.
    pub dmabuf: bool,
}

/// One scanout.
#[derive(Debug)]
pub(crate) struct Scanout {
    /// Connected output resolution (`None`: disconnected).
    pub mode: Option<(u32, u32)>,
    pub shown: Option<Shown>,
}

impl Scanout {
    pub fn new(mode: Option<(u32, u32)>) -> Self {
        Scanout { mode, shown: None }
    }
}

/// Last cursor state (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CursorState {
    pub resource_id: u32,
    pub scanout_id: u32,
    pub x: u32,
    pub y: u32,
}

/// Every scanout, and the cursor.
#[derive(Debug)]
pub(crate) struct Scanouts {
    outputs: Vec<Scanout>,
    /// Last cursor state.
    pub cursor: CursorState,
}

impl Scanouts {
    /// Scanouts connected with `modes`, showing nothing.
    pub fn new(modes: impl IntoIterator<Item = (u32, u32)>) -> Self {
        Scanouts {
            outputs: modes.into_iter().map(|m| Scanout::new(Some(m))).collect(),
            cursor: CursorState::default(),
        }
    }

    /// Scanouts as a previous process had them (live upgrade).
    pub fn restored(outputs: Vec<Scanout>, cursor: CursorState) -> Self {
        Scanouts { outputs, cursor }
    }

    /// Number of scanouts.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    /// `Ok` for an existing scanout, else `ERR_INVALID_SCANOUT_ID`.
    pub fn check(&self, scanout_id: u32) -> Result<(), Reject> {
        if (scanout_id as usize) < self.outputs.len() {
            Ok(())
        } else {
            Err(reject(
                GpuError::InvalidScanoutId,
                format!(
                    "scanout_id {scanout_id} does not exist ({} scanouts)",
                    self.outputs.len()
                ),
            ))
        }
    }

    /// The scanout, if it exists.
    pub fn get(&self, scanout_id: u32) -> Option<&Scanout> {
        self.outputs.get(scanout_id as usize)
    }

    /// The scanout, if it exists.
    pub fn get_mut(&mut self, scanout_id: u32) -> Option<&mut Scanout> {
        self.outputs.get_mut(scanout_id as usize)
    }

    /// Every scanout with its id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Scanout)> {
        (0u32..).zip(self.outputs.iter())
    }

    /// The scanouts showing `resource_id`.
    pub fn showing(&self, resource_id: u32) -> Vec<u32> {
        self.iter()
            .filter(|(_, s)| {
                s.shown
                    .as_ref()
                    .is_some_and(|v| v.view.resource_id == resource_id)
            })
            .map(|(id, _)| id)
            .collect()
    }

    /// What `scanout_id` shows, if anything.
    pub fn shown_mut(&mut self, scanout_id: u32) -> Option<&mut Shown> {
        self.get_mut(scanout_id).and_then(|s| s.shown.as_mut())
    }

    /// Stops showing `resource_id` wherever it is shown; returns the scanouts that now show
    /// nothing.
    pub fn stop_showing(&mut self, resource_id: u32) -> Vec<u32> {
        let mut stopped = Vec::new();
        for (id, s) in (0u32..).zip(self.outputs.iter_mut()) {
            if s.shown
                .as_ref()
                .is_some_and(|v| v.view.resource_id == resource_id)
            {
                s.shown = None;
                stopped.push(id);
            }
        }
        stopped
    }

    /// Stops showing anything (device reset; whether an output is connected is host state and
    /// survives); returns the scanouts that showed something.
    pub fn stop_all(&mut self) -> Vec<u32> {
        self.cursor = CursorState::default();
        let mut stopped = Vec::new();
        for (id, s) in (0u32..).zip(self.outputs.iter_mut()) {
            if s.shown.take().is_some() {
                stopped.push(id);
            }
        }
        stopped
    }
}
