//! Error type.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What a descriptor is when it is neither a dma-buf nor a memfd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file (on a real filesystem, or a tmpfs file that is not a memfd).
    RegularFile,
    /// A directory.
    Directory,
    /// A pipe or FIFO.
    Pipe,
    /// A socket.
    Socket,
    /// A character device (e.g. `/dev/null`, a DRM node).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// An `O_PATH` symlink.
    Symlink,
    /// An anonymous inode (`eventfd`, `timerfd`, `sync_file`, ...); carries the kind shown in
    /// `/proc/self/fd`, e.g. `[eventfd]`.
    AnonInode(String),
    /// Anything else.
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::RegularFile => f.write_str("a regular file"),
            FileKind::Directory => f.write_str("a directory"),
            FileKind::Pipe => f.write_str("a pipe"),
            FileKind::Socket => f.write_str("a socket"),
            FileKind::CharDevice => f.write_str("a character device"),
            FileKind::BlockDevice => f.write_str("a block device"),
            FileKind::Symlink => f.write_str("a symlink (O_PATH)"),
            FileKind::AnonInode(k) => write!(f, "an anonymous inode {k}"),
            FileKind::Other => f.write_str("an unrecognised file type"),
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The descriptor is not open (EBADF).
    #[error("not an open file descriptor")]
    BadFd,
    /// The descriptor is something other than a dma-buf or a memfd.
    #[error("descriptor is {what}, not a dma-buf or memfd")]
    NotDmaBuf {
        /// What it is instead.
        what: FileKind,
    },
    /// The caller lacks a permission (e.g. `pidfd_getfd` on another user's process).
    #[error("permission denied: {context}: {source}")]
    Permission {
        /// What was attempted.
        context: String,
        /// The OS error (EPERM or EACCES).
        source: io::Error,
    },
    /// Another OS error.
    #[error("{context}: {source}")]
    Io {
        /// What was attempted.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// A configuration file or string is invalid.
    #[error("invalid configuration{}: {message}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Config {
        /// The file, if the configuration came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// Wraps an OS error with context; EPERM/EACCES become [`Error::Permission`], EBADF
    /// becomes [`Error::BadFd`].
    pub fn os(context: impl Into<String>, source: io::Error) -> Error {
        match source.raw_os_error() {
            Some(libc::EBADF) => Error::BadFd,
            Some(libc::EPERM) | Some(libc::EACCES) => Error::Permission {
                context: context.into(),
                source,
            },
            _ => Error::Io {
                context: context.into(),
                source,
            },
        }
    }

    /// A negative errno-style code for the C ABI.
    pub fn errno(&self) -> i32 {
        match self {
            Error::BadFd => libc::EBADF,
            Error::NotDmaBuf { .. } => libc::ENOTTY,
            Error::Permission { source, .. } | Error::Io { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            Error::Config { .. } => libc::EINVAL,
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::os("system call failed", io::Error::from(e))
    }
}
