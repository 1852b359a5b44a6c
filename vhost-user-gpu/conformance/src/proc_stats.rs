//! Resource counters of a backend process from `/proc`, to catch leaked fds and mappings,
//! and its memory figures ([`MemoryStats`]), to check what a guest can make it allocate.

use std::fs;

use crate::{Error, Result};

/// Open fds and mappings of a process at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStats {
    /// Entries of `/proc/PID/fd`.
    pub fds: usize,
    /// Lines of `/proc/PID/maps`.
    pub maps: usize,
    /// Mappings of memfds or dma-bufs (`/memfd:` or `/dmabuf:` in the path column).
    pub buffer_maps: usize,
    /// Targets of the fds (`socket:[N]`, `/memfd:name (deleted)`, ...), sorted.
    pub fd_targets: Vec<String>,
    /// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub rss_kib: u64,
}

impl ProcStats {
    /// Reads the counters of `pid`.
    pub fn of(pid: u32) -> Result<Self> {
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(Error::io("read /proc/PID/fd"))?
            .count();
        let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(Error::io("read /proc/PID/maps"))?;
        let buffer_maps = maps
            .lines()
            .filter(|l| l.contains("/memfd:") || l.contains("/dmabuf:") || l.contains("dmabuf"))
            .count();
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(Error::io("read /proc/PID/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Self {
            fds,
            maps: maps.lines().count(),
            buffer_maps,
            fd_targets: Self::fd_targets(pid),
            rss_kib,
        })
    }

    /// What `self` has that `before` did not (fd targets), for leak reports.
    pub fn new_fds(&self, before: &ProcStats) -> Vec<String> {
        let mut old = before.fd_targets.clone();
        self.fd_targets
            .iter()
            .filter(|t| match old.iter().position(|o| o == *t) {
                Some(i) => {
                    old.remove(i);
                    false
                }
                None => true,
            })
            .cloned()
            .collect()
    }

    /// Targets of `/proc/PID/fd/*`, for leak diagnostics.
    pub fn fd_targets(pid: u32) -> Vec<String> {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        let mut v: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| fs::read_link(e.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        v.sort();
        v
    }
}

/// Memory figures of a process from `/proc/PID/status`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Resident memory now (`VmRSS`: anonymous, file and shared memory pages).
    pub rss: u64,
    /// The most resident memory the process ever had (`VmHWM`, its peak RSS).
    pub peak_rss: u64,
    /// Resident anonymous memory now (`RssAnon`: the heap, not guest RAM or buffers).
    pub anon: u64,
    /// Address space now (`VmSize`).
    pub address_space: u64,
}

impl MemoryStats {
    /// Reads the figures of `pid`.
    pub fn of(pid: u32) -> Result<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(Error::io("read /proc/PID/status"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .ok_or_else(|| Error::Malformed(format!("no {name} in /proc/{pid}/status")))
        };
        Ok(Self {
            rss: field("VmRSS")?,
            peak_rss: field("VmHWM")?,
            anon: field("RssAnon")?,
            address_space: field("VmSize")?,
        })
    }
}
