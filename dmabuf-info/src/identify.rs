//! Identification: is a descriptor a dma-buf, a memfd, or something else?
//!
//! - dma-buf: `fstatfs().f_type == DMA_BUF_MAGIC`; `/proc/self/fdinfo/N` gives `size`,
//!   `count`, `exp_name` and (when set) `name`.
//! - memfd: a regular file on tmpfs or hugetlbfs whose `/proc/self/fd/N` link reads
//!   `/memfd:NAME (deleted)`.
//! - anything else: [`Error::NotDmaBuf`] naming what it is (regular file, pipe, socket, ...),
//!   or [`Error::BadFd`] for a descriptor that is not open.

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::fs::{FileType, Stat};

use crate::error::{Error, FileKind};
use crate::info::BufferKind;
use crate::uapi::{DMA_BUF_MAGIC, HUGETLBFS_MAGIC, TMPFS_MAGIC};

/// The facts about a buffer descriptor that do not depend on any answer source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// dma-buf or memfd.
    pub kind: BufferKind,
    /// `exp_name` (dma-buf) or `"memfd"`.
    pub exporter: String,
    /// Size in bytes.
    pub size: u64,
    /// dma-buf name or memfd name.
    pub name: Option<String>,
    /// `st_ino`.
    pub inode: u64,
    /// `st_dev`.
    pub device: u64,
    /// fdinfo `count:` (file references to the dma-buf), when present.
    pub count: Option<u64>,
}

/// The fields of a dma-buf's `/proc/<pid>/fdinfo/<fd>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    /// `size:`.
    pub size: Option<u64>,
    /// `count:`.
    pub count: Option<u64>,
    /// `exp_name:`.
    pub exp_name: Option<String>,
    /// `name:`.
    pub name: Option<String>,
}

/// Parses the text of a dma-buf fdinfo file. Unknown lines are ignored.
pub fn parse_fdinfo(text: &str) -> FdInfo {
    let mut out = FdInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "size" => out.size = value.parse().ok(),
            "count" => out.count = value.parse().ok(),
            "exp_name" => out.exp_name = Some(value.to_string()),
            "name" if !value.is_empty() => out.name = Some(value.to_string()),
            _ => {}
        }
    }
    out
}

/// `(st_dev, st_ino)`: identifies a buffer for as long as it lives.
#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
pub fn buffer_key(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// `fstat` with EBADF mapped to [`Error::BadFd`].
pub fn stat(fd: BorrowedFd<'_>) -> Result<Stat, Error> {
    rustix::fs::fstat(fd).map_err(|e| Error::os("fstat", e.into()))
}

/// Classifies a non-buffer file from its `st_mode` and `/proc/self/fd` link.
pub fn file_kind(st: &Stat, link: Option<&str>) -> FileKind {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => FileKind::RegularFile,
        FileType::Directory => FileKind::Directory,
        FileType::Fifo => FileKind::Pipe,
        FileType::Socket => FileKind::Socket,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        FileType::Symlink => FileKind::Symlink,
        FileType::Unknown => match link.and_then(|l| l.strip_prefix("anon_inode:")) {
            Some(kind) => FileKind::AnonInode(kind.to_string()),
            None => FileKind::Other,
        },
    }
}

fn fd_link(fd: BorrowedFd<'_>) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The memfd name from a `/proc/self/fd` link (`/memfd:NAME (deleted)`), if it is one.
pub fn memfd_name_from_link(link: &str) -> Option<String> {
    let rest = link.strip_prefix("/memfd:")?;
    Some(rest.strip_suffix(" (deleted)").unwrap_or(rest).to_string())
}

/// Identifies `fd` (already `fstat`ed as `st`).
pub fn identify_with_stat(fd: BorrowedFd<'_>, st: &Stat) -> Result<Identity, Error> {
    let fs = rustix::fs::fstatfs(fd).map_err(|e| Error::os("fstatfs", e.into()))?;
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.f_type as i64;
    let (device, inode) = buffer_key(st);
    if magic == DMA_BUF_MAGIC {
        let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::os(format!("read {path}"), e))?;
        let info = parse_fdinfo(&text);
        return Ok(Identity {
            kind: BufferKind::DmaBuf,
            exporter: info.exp_name.unwrap_or_default(),
            size: info.size.unwrap_or(st.st_size as u64),
            name: info.name,
            inode,
            device,
            count: info.count,
        });
    }
    let link = fd_link(fd);
    let is_reg = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
    if is_reg && (magic == TMPFS_MAGIC || magic == HUGETLBFS_MAGIC) {
        if let Some(name) = link.as_deref().and_then(memfd_name_from_link) {
            return Ok(Identity {
                kind: BufferKind::Memfd,
                exporter: "memfd".to_string(),
                size: st.st_size as u64,
                name: Some(name),
                inode,
                device,
                count: None,
            });
        }
    }
    Err(Error::NotDmaBuf {
        what: file_kind(st, link.as_deref()),
    })
}

/// Identifies `fd`: a dma-buf, a memfd, or an error naming what it is.
pub fn identify(fd: BorrowedFd<'_>) -> Result<Identity, Error> {
    let st = stat(fd)?;
    identify_with_stat(fd, &st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_named_dma_buf() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1234\nsize:\t8192\ncount:\t1\nexp_name:\tudmabuf\nname:\tscanout\n";
        let info = parse_fdinfo(text);
        assert_eq!(info.size, Some(8192));
        assert_eq!(info.count, Some(1));
        assert_eq!(info.exp_name.as_deref(), Some("udmabuf"));
        assert_eq!(info.name.as_deref(), Some("scanout"));
    }

    #[test]
    fn fdinfo_without_name() {
        let info = parse_fdinfo("size:\t4096\ncount:\t2\nexp_name:\tdrm\n");
        assert_eq!(info.exp_name.as_deref(), Some("drm"));
        assert_eq!(info.name, None);
    }

    #[test]
    fn memfd_links() {
        assert_eq!(
            memfd_name_from_link("/memfd:frame (deleted)").as_deref(),
            Some("frame")
        );
        assert_eq!(
            memfd_name_from_link("/memfd: (deleted)").as_deref(),
            Some("")
        );
        assert_eq!(memfd_name_from_link("/tmp/memfd:x"), None);
        assert_eq!(memfd_name_from_link("/dmabuf:"), None);
    }
}
