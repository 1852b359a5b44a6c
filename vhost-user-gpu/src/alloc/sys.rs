//! Raw system calls of the allocators: sealed memfds and the udmabuf ioctls.
//!
//! The only `unsafe` of `crate::alloc` lives here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};

/// `UDMABUF_FLAGS_CLOEXEC`.
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

/// `struct udmabuf_create` (include/uapi/linux/udmabuf.h).
#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

/// `struct udmabuf_create_item`.
#[repr(C)]
#[derive(Clone, Copy)]
struct UdmabufCreateItem {
    memfd: u32,
    pad: u32,
    offset: u64,
    size: u64,
}

/// `struct udmabuf_create_list` header (followed by `count` items).
#[repr(C)]
struct UdmabufCreateListHeader {
    flags: u32,
    count: u32,
}

const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    // _IOC(_IOC_WRITE = 1, type, nr, size) on the asm-generic layout (x86, arm64, riscv).
    (1 << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `UDMABUF_CREATE = _IOW('u', 0x42, struct udmabuf_create)`.
const UDMABUF_CREATE: u32 = iow(b'u', 0x42, std::mem::size_of::<UdmabufCreate>());
/// `UDMABUF_CREATE_LIST = _IOW('u', 0x43, struct udmabuf_create_list)`.
const UDMABUF_CREATE_LIST: u32 = iow(b'u', 0x43, std::mem::size_of::<UdmabufCreateListHeader>());

/// Most items the kernel accepts in one `UDMABUF_CREATE_LIST` (module parameter
/// `list_limit`, default 1024).
pub(crate) const UDMABUF_LIST_LIMIT: usize = 1024;

/// Creates a memfd of `size` bytes (zero-filled by the kernel) and adds `seals`.
pub(crate) fn sealed_memfd(name: &str, size: u64, seals: SealFlags) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, size)?;
    rustix::fs::fcntl_add_seals(&fd, seals)?;
    Ok(fd)
}

/// One piece of a memfd to put into a udmabuf.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UdmabufItem<'a> {
    /// The memfd (must carry `F_SEAL_SHRINK`, must not carry `F_SEAL_WRITE`).
    pub memfd: BorrowedFd<'a>,
    /// Page-aligned offset.
    pub offset: u64,
    /// Page-aligned size.
    pub size: u64,
}

fn fd_u32(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `UDMABUF_CREATE` on `dev` (an open `/dev/udmabuf`): a dma-buf over one memfd range.
pub(crate) fn udmabuf_create(dev: BorrowedFd<'_>, item: UdmabufItem<'_>) -> io::Result<OwnedFd> {
    let arg = UdmabufCreate {
        memfd: fd_u32(item.memfd)?,
        flags: UDMABUF_FLAGS_CLOEXEC,
        offset: item.offset,
        size: item.size,
    };
    // SAFETY: UDMABUF_CREATE reads exactly one `struct udmabuf_create`, which `arg` is (same
    // layout, repr(C)), and `arg` outlives the call. The kernel does not keep the pointer.
    let ret = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            UDMABUF_CREATE as _,
            &arg as *const UdmabufCreate,
        )
    };
    owned_fd_from_ret(ret)
}

/// `UDMABUF_CREATE_LIST` on `dev`: one dma-buf over several memfd ranges, in order.
pub(crate) fn udmabuf_create_list(
    dev: BorrowedFd<'_>,
    items: &[UdmabufItem<'_>],
) -> io::Result<OwnedFd> {
    if items.is_empty() || items.len() > UDMABUF_LIST_LIMIT {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // Header and items as one u64-aligned buffer: header (8 bytes) then 24-byte items.
    let header_words = std::mem::size_of::<UdmabufCreateListHeader>() / 8;
    let item_words = std::mem::size_of::<UdmabufCreateItem>() / 8;
    let mut buf = vec![0u64; header_words + item_words * items.len()];
    let header = UdmabufCreateListHeader {
        flags: UDMABUF_FLAGS_CLOEXEC,
        count: items.len() as u32,
    };
    let mut raw_items = Vec::with_capacity(items.len());
    for item in items {
        raw_items.push(UdmabufCreateItem {
            memfd: fd_u32(item.memfd)?,
            pad: 0,
            offset: item.offset,
            size: item.size,
        });
    }
    // SAFETY: `buf` is u64-aligned and large enough for the header followed by
    // `items.len()` items (sizes computed from the same types above; both are multiples of
    // 8 bytes and need at most 8-byte alignment). We write plain-old-data values into it.
    unsafe {
        let base = buf.as_mut_ptr() as *mut u8;
        std::ptr::write(base as *mut UdmabufCreateListHeader, header);
        let list =
            base.add(std::mem::size_of::<UdmabufCreateListHeader>()) as *mut UdmabufCreateItem;
        std::ptr::copy_nonoverlapping(raw_items.as_ptr(), list, raw_items.len());
    }
    // SAFETY: UDMABUF_CREATE_LIST reads the header and then `count` items from the pointer;
    // `buf` holds exactly that and outlives the call. The kernel does not keep the pointer.
    let ret = unsafe { libc::ioctl(dev.as_raw_fd(), UDMABUF_CREATE_LIST as _, buf.as_ptr()) };
    owned_fd_from_ret(ret)
}

fn owned_fd_from_ret(ret: libc::c_int) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success both udmabuf ioctls return a new file descriptor that nothing else
    // owns; we take ownership exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // _IOW('u', 0x42, 24 bytes) and _IOW('u', 0x43, 8 bytes).
        assert_eq!(UDMABUF_CREATE, 0x4018_7542);
        assert_eq!(UDMABUF_CREATE_LIST, 0x4008_7543);
        assert_eq!(std::mem::size_of::<UdmabufCreateItem>(), 24);
    }

    #[test]
    fn sealed_memfd_is_zeroed_and_cannot_change_size() {
        let fd = sealed_memfd(
            "test",
            8192,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .unwrap();
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 8192);
        assert!(rustix::fs::ftruncate(&fd, 4096).is_err());
        assert!(rustix::fs::ftruncate(&fd, 16384).is_err());
        let mut buf = vec![0xffu8; 8192];
        let n = rustix::io::pread(&fd, &mut buf, 0).unwrap();
        assert_eq!(n, 8192);
        assert!(buf.iter().all(|&b| b == 0));
    }
}
