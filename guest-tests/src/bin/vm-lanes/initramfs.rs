//! A busybox initramfs written as an uncompressed `newc` cpio archive.
//!
//! The archive carries busybox (static), the kernel modules a lane loads
//! (decompressed: busybox `insmod` cannot read `.ko.xz`), our static test
//! binaries and an `/init` script generated per lane.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// An archive being assembled in memory.
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_inode: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    /// Adds a directory (parents must be added first).
    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
    }

    /// Adds a regular file with the given permission bits.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | mode, (0, 0), data);
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | 0o600, (major, minor), &[]);
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_inode += 1;
        let name_size = path.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.next_inode,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name_size,
            0
        );
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// Ends the archive and writes it to `path`.
    pub fn finish(mut self, path: &Path) -> Result<(), Error> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        let mut file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
        file.write_all(&self.bytes).map_err(|e| Error::io(path, e))
    }
}

/// The base of every lane's initramfs: directories, device nodes and busybox.
pub fn base() -> Result<Archive, Error> {
    let busybox = Path::new("/bin/busybox");
    let data = fs::read(busybox).map_err(|e| Error::io(busybox, e))?;
    if !is_static_elf(&data) {
        return Err(Error::Setup(
            "/bin/busybox is dynamically linked; install busybox-static".into(),
        ));
    }
    let mut archive = Archive::default();
    for dir in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "lib",
        "lib/modules",
        "usr",
        "usr/bin",
    ] {
        archive.dir(dir);
    }
    archive.char_device("dev/console", 5, 1);
    archive.char_device("dev/null", 1, 3);
    archive.file("bin/busybox", 0o755, &data);
    Ok(archive)
}

/// True for a 64-bit little-endian ELF without a `PT_INTERP` program header
/// (a binary that runs without a dynamic loader).
pub fn is_static_elf(data: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, len: usize| data.get(at..at.checked_add(len)?);
    let Some(magic) = read(0, 6) else {
        return false;
    };
    // "\x7fELF", ELFCLASS64, ELFDATA2LSB.
    if magic != b"\x7fELF\x02\x01" {
        return false;
    }
    let u16_at = |at| read(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let (Some(phoff), Some(phentsize), Some(phnum)) = (
        read(0x20, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes),
        u16_at(0x36),
        u16_at(0x38),
    ) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..phnum).all(|i| {
        i.checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|at| read(at, 4))
            .is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != PT_INTERP)
    })
}

/// Returns `modules`, each preceded by everything it depends on, in load order,
/// as paths relative to the modules directory (from its `modules.dep`).
pub fn module_load_order(modules_dir: &Path, modules: &[&str]) -> Result<Vec<String>, Error> {
    let dep_file = modules_dir.join("modules.dep");
    let text = fs::read_to_string(&dep_file).map_err(|e| Error::io(&dep_file, e))?;
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let list = rest.split_whitespace().map(module_name).collect();
        deps.insert(module_name(path), (path.to_string(), list));
    }
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), Error> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (path, needs) = deps
            .get(name)
            .ok_or_else(|| Error::Setup(format!("module {name} is not in modules.dep")))?;
        for need in needs {
            visit(need, deps, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    for module in modules {
        visit(&module.replace('-', "_"), &deps, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// `kernel/drivers/gpu/drm/virtio/virtio-gpu.ko.xz` -> `virtio_gpu`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Adds the modules (decompressed) to the archive under `lib/modules/` and
/// returns their file names in load order.
pub fn add_modules(
    archive: &mut Archive,
    modules_dir: &Path,
    modules: &[&str],
) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for relative in module_load_order(modules_dir, modules)? {
        let path: PathBuf = modules_dir.join(&relative);
        let data = if relative.ends_with(".xz") {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&path)
                .output()
                .map_err(|e| Error::io(Path::new("xz"), e))?;
            if !out.status.success() {
                return Err(Error::Setup(format!("xz -dc {} failed", path.display())));
            }
            out.stdout
        } else {
            fs::read(&path).map_err(|e| Error::io(&path, e))?
        };
        let name = format!("{}.ko", module_name(&relative));
        archive.file(&format!("lib/modules/{name}"), 0o644, &data);
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_come_after_their_dependencies() {
        let dir = std::env::temp_dir().join(format!("vm-lanes-dep-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("modules.dep"),
            "kernel/gpu/virtio/virtio-gpu.ko.xz: kernel/gpu/drm_kms_helper.ko.xz kernel/gpu/drm.ko.xz kernel/virtio_dma_buf.ko.xz\n\
             kernel/gpu/drm_kms_helper.ko.xz: kernel/gpu/drm.ko.xz\n\
             kernel/gpu/drm.ko.xz:\n\
             kernel/virtio_dma_buf.ko.xz:\n",
        )
        .unwrap();
        let order = module_load_order(&dir, &["virtio-gpu", "drm"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/gpu/drm.ko.xz",
                "kernel/gpu/drm_kms_helper.ko.xz",
                "kernel/virtio_dma_buf.ko.xz",
                "kernel/gpu/virtio/virtio-gpu.ko.xz"
            ]
        );
        assert!(module_load_order(&dir, &["vgem"]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn static_and_dynamic_binaries_are_told_apart() {
        // A minimal ELF64 header with one program header of the given type.
        let elf = |p_type: u32| {
            let mut bytes = vec![0u8; 64 + 56];
            bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
            bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            bytes[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            bytes[64..68].copy_from_slice(&p_type.to_le_bytes());
            bytes
        };
        assert!(is_static_elf(&elf(1)));
        assert!(!is_static_elf(&elf(3)));
        // This test executable is dynamically linked.
        assert!(!is_static_elf(&fs::read("/proc/self/exe").unwrap()));
        assert!(!is_static_elf(b"#!/bin/sh"));
    }

    #[test]
    fn newc_entries_are_aligned() {
        let mut archive = Archive::default();
        archive.dir("bin");
        archive.file("bin/x", 0o755, b"abcde");
        assert!(archive.bytes.len().is_multiple_of(4));
        assert!(archive.bytes.starts_with(b"070701"));
    }
}
