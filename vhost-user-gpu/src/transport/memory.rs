//! The guest memory table: the frontend's regions (`SET_MEM_TABLE`, or one by one with
//! `ADD_MEM_REG`/`REM_MEM_REG` under `CONFIGURE_MEM_SLOTS`) mapped here with vm-memory.
//!
//! Each region keeps the frontend's fd (inside vm-memory's `FileOffset`), so the live upgrade
//! can hand the very same regions to the next process. The queue thread reads memory through a
//! `GuestMemoryAtomic`, so replacing the table (QEMU 11.1 does it twice per mapped blob) is a
//! pointer swap that never waits for the queue thread.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryRegion, GuestRegionMmap,
};

use crate::device::ports::GuestMemory;

/// Most regions the backend accepts (`GET_MAX_MEM_SLOTS`): the number the device's fd
/// reserve is sized for ([`crate::device::FD_RESERVE`]).
pub const MAX_MEM_SLOTS: u64 = crate::device::MAX_MEMORY_REGIONS;

/// One region as the frontend described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionInfo {
    /// Guest-physical address.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// Address of the region in the frontend's process (ring addresses are given in these).
    pub user_addr: u64,
    /// Offset of the region in its fd.
    pub mmap_offset: u64,
}

impl RegionInfo {
    fn from_message(region: &VhostUserMemoryRegion) -> Self {
        RegionInfo {
            guest_phys_addr: region.guest_phys_addr,
            memory_size: region.memory_size,
            user_addr: region.user_addr,
            mmap_offset: region.mmap_offset,
        }
    }

    fn to_message(self) -> VhostUserMemoryRegion {
        VhostUserMemoryRegion::new(
            self.guest_phys_addr,
            self.memory_size,
            self.user_addr,
            self.mmap_offset,
        )
    }
}

/// Why a memory update was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The region cannot be mapped here.
    #[error("cannot map region {gpa:#x}+{size:#x}: {source}")]
    Map {
        /// Guest-physical address.
        gpa: u64,
        /// Size.
        size: u64,
        /// Why.
        source: io::Error,
    },
    /// Regions overlap, are empty, or a removed region does not exist.
    #[error("invalid memory table change: {0}")]
    Invalid(String),
    /// `ADD_MEM_REG` past [`MAX_MEM_SLOTS`].
    #[error("more than {MAX_MEM_SLOTS} memory regions")]
    TooManyRegions,
}

/// The guest memory table of one connection.
pub struct MemoryTable {
    regions: Vec<(RegionInfo, Arc<GuestRegionMmap>)>,
    atomic: GuestMemoryAtomic<GuestMemory>,
}

impl Default for MemoryTable {
    fn default() -> Self {
        MemoryTable {
            regions: Vec::new(),
            atomic: GuestMemoryAtomic::new(GuestMemory::new()),
        }
    }
}

fn map_region(info: RegionInfo, file: File) -> Result<Arc<GuestRegionMmap>, MemoryError> {
    let err = |source: io::Error| MemoryError::Map {
        gpa: info.guest_phys_addr,
        size: info.memory_size,
        source,
    };
    let mmap = info
        .to_message()
        .mmap_region(file)
        .map_err(|e| err(io::Error::other(e.to_string())))?;
    let region =
        GuestRegionMmap::new(mmap, GuestAddress(info.guest_phys_addr)).ok_or_else(|| {
            err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "region wraps the address space",
            ))
        })?;
    Ok(Arc::new(region))
}

impl MemoryTable {
    /// A handle the queue thread reads memory through (sees every later update).
    pub fn atomic(&self) -> GuestMemoryAtomic<GuestMemory> {
        self.atomic.clone()
    }

    /// The memory as it is now.
    pub fn memory(&self) -> vm_memory::GuestMemoryLoadGuard<GuestMemory> {
        self.atomic.memory()
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Region descriptions, in table order.
    pub fn infos(&self) -> Vec<RegionInfo> {
        self.regions.iter().map(|(info, _)| *info).collect()
    }

    /// The frontend's fd of each region, in table order (for the live upgrade).
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.regions
            .iter()
            .filter_map(|(_, r)| r.file_offset().map(|f| f.file().as_fd()))
            .collect()
    }

    fn publish(&mut self) -> Result<(), MemoryError> {
        let mut regions: Vec<Arc<GuestRegionMmap>> =
            self.regions.iter().map(|(_, r)| r.clone()).collect();
        regions.sort_by_key(|r| r.start_addr());
        let mem = if regions.is_empty() {
            GuestMemory::new()
        } else {
            GuestMemory::from_arc_regions(regions)
                .map_err(|e| MemoryError::Invalid(e.to_string()))?
        };
        self.atomic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(mem);
        Ok(())
    }

    /// `SET_MEM_TABLE`: the whole table anew.
    pub fn set_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
    ) -> Result<(), MemoryError> {
        if regions.len() != files.len() {
            return Err(MemoryError::Invalid(format!(
                "{} regions with {} fds",
                regions.len(),
                files.len()
            )));
        }
        let mut mapped = Vec::with_capacity(regions.len());
        for (region, file) in regions.iter().zip(files) {
            let info = RegionInfo::from_message(region);
            mapped.push((info, map_region(info, file)?));
        }
        let old = std::mem::replace(&mut self.regions, mapped);
        if let Err(e) = self.publish() {
            self.regions = old;
            return Err(e);
        }
        Ok(())
    }

    /// `ADD_MEM_REG`.
    pub fn add(&mut self, region: &VhostUserMemoryRegion, file: File) -> Result<(), MemoryError> {
        if self.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Err(MemoryError::TooManyRegions);
        }
        let info = RegionInfo::from_message(region);
        self.regions.push((info, map_region(info, file)?));
        if let Err(e) = self.publish() {
            self.regions.pop();
            return Err(e);
        }
        Ok(())
    }

    /// `REM_MEM_REG`: removes the region at the same guest address with the same size.
    pub fn remove(&mut self, region: &VhostUserMemoryRegion) -> Result<(), MemoryError> {
        let Some(at) = self.regions.iter().position(|(info, _)| {
            info.guest_phys_addr == region.guest_phys_addr && info.memory_size == region.memory_size
        }) else {
            let (gpa, size) = (region.guest_phys_addr, region.memory_size);
            return Err(MemoryError::Invalid(format!(
                "no region {gpa:#x}+{size:#x} to remove"
            )));
        };
        let removed = self.regions.remove(at);
        if let Err(e) = self.publish() {
            self.regions.insert(at, removed);
            return Err(e);
        }
        Ok(())
    }

    /// Restores a table from region descriptions and their fds (live upgrade).
    pub fn restore(infos: &[RegionInfo], files: Vec<File>) -> Result<Self, MemoryError> {
        let mut table = MemoryTable::default();
        let regions: Vec<VhostUserMemoryRegion> = infos.iter().map(|i| i.to_message()).collect();
        table.set_table(&regions, files)?;
        Ok(table)
    }

    /// Translates an address in the frontend's process (ring addresses) to a guest-physical
    /// address.
    pub fn frontend_to_guest(&self, user_addr: u64) -> Option<u64> {
        self.regions.iter().find_map(|(info, _)| {
            let offset = user_addr.checked_sub(info.user_addr)?;
            (offset < info.memory_size).then(|| info.guest_phys_addr + offset)
        })
    }

    /// Addresses where the regions are mapped here (for log lines naming what changed).
    pub fn local_addresses(&self) -> Vec<usize> {
        self.regions
            .iter()
            .map(|(_, r)| r.as_ptr() as usize)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    fn memfd(size: u64) -> File {
        let fd = rustix::fs::memfd_create("guest-ram", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        File::from(fd)
    }

    #[test]
    fn table_add_remove_translate_and_restore() {
        let mut table = MemoryTable::default();
        let ram = VhostUserMemoryRegion::new(0, 0x10000, 0x7000_0000, 0);
        table.set_table(&[ram], vec![memfd(0x10000)]).unwrap();
        let atomic = table.atomic();
        atomic
            .memory()
            .write_obj(0x1234_5678u32, GuestAddress(0x100))
            .unwrap();
        assert_eq!(table.frontend_to_guest(0x7000_0100), Some(0x100));
        assert_eq!(table.frontend_to_guest(0x7001_0000), None);

        let blob = VhostUserMemoryRegion::new(0xe000_0000, 0x4000, 0x7100_0000, 0);
        table.add(&blob, memfd(0x4000)).unwrap();
        assert_eq!(table.len(), 2);
        assert!(GuestMemoryBackend::check_range(
            &*atomic.memory(),
            GuestAddress(0xe000_0000),
            0x4000
        ));
        assert_eq!(table.frontend_to_guest(0x7100_0010), Some(0xe000_0010));

        // An overlapping region is refused and the table stays as it was.
        let overlap = VhostUserMemoryRegion::new(0x8000, 0x10000, 0x7200_0000, 0);
        assert!(table.add(&overlap, memfd(0x10000)).is_err());
        assert_eq!(table.len(), 2);

        // Restored from descriptions and (duplicated) fds, it shows the same memory.
        let fds: Vec<File> = table
            .fds()
            .iter()
            .map(|fd| File::from(fd.try_clone_to_owned().unwrap()))
            .collect();
        let copy = MemoryTable::restore(&table.infos(), fds).unwrap();
        assert_eq!(copy.infos(), table.infos());
        assert_eq!(
            copy.memory().read_obj::<u32>(GuestAddress(0x100)).unwrap(),
            0x1234_5678
        );

        table.remove(&blob).unwrap();
        assert!(!GuestMemoryBackend::check_range(
            &*atomic.memory(),
            GuestAddress(0xe000_0000),
            1
        ));
        assert!(table.remove(&blob).is_err());
    }
}
