//! The driver side of a split virtqueue (virtio 1.x, section 2.7) laid out in guest RAM.
//!
//! Its one `unsafe`: borrowing the call eventfd (vmm-sys-util's `EventFd` has no `AsFd`)
//! to `poll` it.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use vhost::VringConfigData;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::GuestRam;
use crate::{Error, Result};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const RING_F_EVENT_IDX: u64 = 1 << 29;
const DESC_SIZE: u64 = 16;

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    /// Guest-physical address of the buffer.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes this buffer (a response) rather than reads it.
    pub device_writable: bool,
}

impl Segment {
    /// A buffer the device reads.
    pub fn readable(gpa: u64, len: u32) -> Self {
        Self {
            gpa,
            len,
            device_writable: false,
        }
    }
    /// A buffer the device writes.
    pub fn writable(gpa: u64, len: u32) -> Self {
        Self {
            gpa,
            len,
            device_writable: true,
        }
    }
}

fn encode_desc(seg: &Segment, next: Option<u16>) -> [u8; 16] {
    let mut flags = 0;
    if seg.device_writable {
        flags |= DESC_F_WRITE;
    }
    if next.is_some() {
        flags |= DESC_F_NEXT;
    }
    let mut desc = [0u8; 16];
    desc[0..8].copy_from_slice(&seg.gpa.to_le_bytes());
    desc[8..12].copy_from_slice(&seg.len.to_le_bytes());
    desc[12..14].copy_from_slice(&flags.to_le_bytes());
    desc[14..16].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
    desc
}

/// A descriptor exactly as the driver writes it, for hostile-guest tests: `next` is an index
/// into the same slice (so loops and out-of-order chains can be built).
#[derive(Debug, Clone, Copy)]
pub struct RawDesc {
    /// Buffer address (may lie outside guest RAM on purpose).
    pub addr: u64,
    /// Length (may be absurd on purpose).
    pub len: u32,
    /// Device-writable.
    pub write: bool,
    /// Index in the slice of the next descriptor, if any.
    pub next: Option<usize>,
}

/// A used-ring entry: which chain came back and how many bytes the device wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the chain.
    pub head: u16,
    /// Bytes written by the device.
    pub written: u32,
}

/// A split virtqueue owned by the driver (this frontend).
pub struct SplitQueue {
    index: usize,
    size: u16,
    rings_gpa: u64,
    desc_gpa: u64,
    avail_gpa: u64,
    used_gpa: u64,
    free: Vec<u16>,
    next_avail: u16,
    last_used: u16,
    in_flight: HashMap<u16, Vec<u16>>,
    /// Indirect descriptor tables by head, freed when the chain comes back.
    indirect_tables: HashMap<u16, u64>,
    indirect: bool,
    event_idx: bool,
    kick: EventFd,
    call: EventFd,
}

impl SplitQueue {
    /// Lays out a queue of `size` entries (a power of two) in `ram`.
    pub fn new(ram: &GuestRam, index: usize, size: u16) -> Result<Self> {
        if !size.is_power_of_two() {
            return Err(Error::Queue(format!(
                "queue size {size} is not a power of two"
            )));
        }
        let n = u64::from(size);
        let desc_len = DESC_SIZE * n;
        let avail_len = 6 + 2 * n;
        let used_off = (desc_len + avail_len).next_multiple_of(4);
        let used_len = 6 + 8 * n;
        let rings_gpa = ram.alloc(used_off + used_len, 4096)?;
        Ok(Self {
            index,
            size,
            rings_gpa,
            desc_gpa: rings_gpa,
            avail_gpa: rings_gpa + desc_len,
            used_gpa: rings_gpa + used_off,
            free: (0..size).rev().collect(),
            next_avail: 0,
            last_used: 0,
            in_flight: HashMap::new(),
            indirect_tables: HashMap::new(),
            indirect: false,
            event_idx: false,
            kick: EventFd::new(EFD_NONBLOCK).map_err(Error::io("eventfd"))?,
            call: EventFd::new(EFD_NONBLOCK).map_err(Error::io("eventfd"))?,
        })
    }

    /// Uses negotiated ring features: indirect descriptor tables for chains of more than one
    /// buffer (as Linux does), and `used_event` to ask for notifications.
    pub fn set_ring_features(&mut self, indirect: bool, event_idx: bool) {
        self.indirect = indirect;
        self.event_idx = event_idx;
    }

    /// Queue index (0 control, 1 cursor for virtio-gpu).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Chains handed to the device and not returned yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// The kick eventfd (frontend -> backend).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The call eventfd (backend -> frontend).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// `SET_VRING_ADDR` data; vhost-user wants frontend virtual addresses.
    pub fn vring_config(&self, ram: &GuestRam) -> Result<VringConfigData> {
        Ok(VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: ram.user_addr(self.desc_gpa)?,
            used_ring_addr: ram.user_addr(self.used_gpa)?,
            avail_ring_addr: ram.user_addr(self.avail_gpa)?,
            log_addr: None,
        })
    }

    /// Returns the rings' guest memory to `ram`.
    pub fn release(self, ram: &GuestRam) {
        ram.free(self.rings_gpa);
    }

    /// Puts a chain in the available ring (without kicking). Returns its head index.
    pub fn add_chain(&mut self, ram: &GuestRam, segments: &[Segment]) -> Result<u16> {
        if self.indirect && segments.len() > 1 {
            return self.add_indirect_chain(ram, segments);
        }
        if segments.is_empty() || segments.len() > self.free.len() {
            return Err(Error::Queue(format!(
                "chain of {} descriptors, {} free",
                segments.len(),
                self.free.len()
            )));
        }
        let ids: Vec<u16> = (0..segments.len())
            .filter_map(|_| self.free.pop())
            .collect();
        for (i, (seg, &id)) in segments.iter().zip(&ids).enumerate() {
            let next = ids.get(i + 1).copied();
            let desc = encode_desc(seg, next);
            ram.write(self.desc_gpa + u64::from(id) * DESC_SIZE, &desc)?;
        }
        let head = ids[0];
        self.publish(ram, head)?;
        self.in_flight.insert(head, ids);
        Ok(head)
    }

    /// One ring descriptor pointing at a table holding the whole chain.
    fn add_indirect_chain(&mut self, ram: &GuestRam, segments: &[Segment]) -> Result<u16> {
        let n = u16::try_from(segments.len())
            .map_err(|_| Error::Queue("indirect table too long".into()))?;
        let head = self
            .free
            .pop()
            .ok_or_else(|| Error::Queue("no free descriptor".into()))?;
        let table_len = DESC_SIZE * u64::from(n);
        let table = match ram.alloc(table_len, 16) {
            Ok(t) => t,
            Err(e) => {
                self.free.push(head);
                return Err(e);
            }
        };
        for (i, seg) in segments.iter().enumerate() {
            let next = (i + 1 < segments.len()).then_some(i as u16 + 1);
            ram.write(table + DESC_SIZE * i as u64, &encode_desc(seg, next))?;
        }
        let mut desc = [0u8; 16];
        desc[0..8].copy_from_slice(&table.to_le_bytes());
        desc[8..12].copy_from_slice(&(table_len as u32).to_le_bytes());
        desc[12..14].copy_from_slice(&DESC_F_INDIRECT.to_le_bytes());
        ram.write(self.desc_gpa + u64::from(head) * DESC_SIZE, &desc)?;
        self.publish(ram, head)?;
        self.in_flight.insert(head, vec![head]);
        self.indirect_tables.insert(head, table);
        Ok(head)
    }

    /// Makes `head` available: ring entry, then (release) the index.
    fn publish(&mut self, ram: &GuestRam, head: u16) -> Result<()> {
        let slot = u64::from(self.next_avail % self.size);
        ram.write(self.avail_gpa + 4 + 2 * slot, &head.to_le_bytes())?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The ring entry and descriptors must be visible before the index moves.
        fence(Ordering::Release);
        self.index_cell(ram, self.avail_gpa + 2)?
            .store(self.next_avail, Ordering::Release);
        Ok(())
    }

    /// Puts arbitrary descriptors in the ring with `descs[0]` as head (no validation: this
    /// is how a hostile guest talks). Returns the head index.
    pub fn add_raw_chain(&mut self, ram: &GuestRam, descs: &[RawDesc]) -> Result<u16> {
        if descs.is_empty() || descs.len() > self.free.len() {
            return Err(Error::Queue("no room for the raw chain".into()));
        }
        let ids: Vec<u16> = (0..descs.len()).filter_map(|_| self.free.pop()).collect();
        for (d, &id) in descs.iter().zip(&ids) {
            let mut flags = if d.write { DESC_F_WRITE } else { 0 };
            let next = match d.next {
                Some(i) => {
                    flags |= DESC_F_NEXT;
                    *ids.get(i)
                        .ok_or_else(|| Error::Queue(format!("next index {i}")))?
                }
                None => 0,
            };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            ram.write(self.desc_gpa + u64::from(id) * DESC_SIZE, &raw)?;
        }
        let head = ids[0];
        self.publish(ram, head)?;
        self.in_flight.insert(head, ids);
        Ok(head)
    }

    fn index_cell<'a>(&self, ram: &'a GuestRam, gpa: u64) -> Result<&'a AtomicU16> {
        ram.ring_index(gpa)
    }

    /// Notifies the backend.
    pub fn kick(&self) -> Result<()> {
        self.kick.write(1).map_err(Error::io("kick eventfd"))
    }

    /// The used index in guest memory (what QEMU resumes a ring at when its backend went
    /// away: `virtio_queue_restore_last_avail_idx`).
    pub fn device_used_idx(&self, ram: &GuestRam) -> Result<u16> {
        Ok(self
            .index_cell(ram, self.used_gpa + 2)?
            .load(Ordering::Acquire))
    }

    /// The used index the device published, when it is ahead of what was taken (nothing is
    /// consumed).
    pub fn peek_used(&self, ram: &GuestRam) -> Result<Option<u16>> {
        let used_idx = self
            .index_cell(ram, self.used_gpa + 2)?
            .load(Ordering::Acquire);
        Ok((used_idx != self.last_used).then_some(used_idx))
    }

    /// Takes one returned chain from the used ring, if any, and frees its descriptors.
    pub fn poll_used(&mut self, ram: &GuestRam) -> Result<Option<UsedElem>> {
        let used_idx = self
            .index_cell(ram, self.used_gpa + 2)?
            .load(Ordering::Acquire);
        if used_idx == self.last_used {
            return Ok(None);
        }
        let slot = u64::from(self.last_used % self.size);
        let mut elem = [0u8; 8];
        ram.read(self.used_gpa + 4 + 8 * slot, &mut elem)?;
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let written = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        let head = u16::try_from(id)
            .ok()
            .filter(|h| self.in_flight.contains_key(h))
            .ok_or_else(|| Error::Queue(format!("device returned unknown head {id}")))?;
        if let Some(ids) = self.in_flight.remove(&head) {
            self.free.extend(ids);
        }
        if let Some(table) = self.indirect_tables.remove(&head) {
            ram.free(table);
        }
        Ok(Some(UsedElem { head, written }))
    }

    /// Whether the device signalled the call eventfd within `timeout` (consumes the signal).
    pub fn wait_call(&self, timeout: Duration) -> bool {
        // SAFETY: the eventfd is owned by `self` and outlives this borrow.
        let call = unsafe { BorrowedFd::borrow_raw(self.call.as_raw_fd()) };
        let mut fds = [rustix::event::PollFd::new(
            &call,
            rustix::event::PollFlags::IN,
        )];
        let wait = rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let ready = matches!(rustix::event::poll(&mut fds, Some(&wait)), Ok(n) if n > 0);
        if ready {
            let _ = self.call.read();
        }
        ready
    }

    /// With `EVENT_IDX`: asks the device to notify when the next entry is used
    /// (`used_event`), as a driver does before it waits.
    pub fn request_notification(&mut self, ram: &GuestRam) -> Result<()> {
        if self.event_idx {
            let at = self.avail_gpa + 4 + 2 * u64::from(self.size);
            self.index_cell(ram, at)?
                .store(self.last_used, Ordering::Release);
            fence(Ordering::SeqCst);
        }
        Ok(())
    }

    /// Waits (up to `timeout`, a hang guard, not an assertion) for one returned chain.
    ///
    /// It sleeps on the call eventfd only, so a backend that forgets to notify (or gets
    /// `used_event` wrong) is caught by the hang guard instead of being polled past. With
    /// `connection` (the vhost-user socket), a backend that dies is noticed at once: its end
    /// of the socket closes, and the wait ends with [`Error::BackendGone`].
    pub fn wait_used(
        &mut self,
        ram: &GuestRam,
        timeout: Duration,
        connection: Option<BorrowedFd<'_>>,
    ) -> Result<UsedElem> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.event_idx {
                // used_event: notify me once the entry I read next is used.
                let at = self.avail_gpa + 4 + 2 * u64::from(self.size);
                self.index_cell(ram, at)?
                    .store(self.last_used, Ordering::Release);
                fence(Ordering::SeqCst);
            }
            if let Some(elem) = self.poll_used(ram)? {
                return Ok(elem);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::UsedTimeout(self.index));
            }
            // SAFETY: the eventfd is owned by `self` and outlives this borrow.
            let call = unsafe { BorrowedFd::borrow_raw(self.call.as_raw_fd()) };
            // Only hang-ups of the connection: replies on it are read synchronously elsewhere.
            let watched = connection.unwrap_or(call);
            let mut fds = [
                rustix::event::PollFd::new(&call, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(&watched, rustix::event::PollFlags::RDHUP),
            ];
            let n = if connection.is_some() { 2 } else { 1 };
            let wait = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            });
            let _ = rustix::event::poll(&mut fds[..n], Some(&wait));
            let gone = n == 2
                && fds[1].revents().intersects(
                    rustix::event::PollFlags::RDHUP
                        | rustix::event::PollFlags::HUP
                        | rustix::event::PollFlags::ERR,
                );
            if gone {
                // One last look: the backend may have returned the chain before it went.
                if let Some(elem) = self.poll_used(ram)? {
                    return Ok(elem);
                }
                return Err(Error::BackendGone(self.index));
            }
            let _ = self.call.read();
        }
    }
}
