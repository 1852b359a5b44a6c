//! Guest root file systems with real Debian userspace (Mesa, its demos, Vulkan tools), for
//! lanes that run more than our own static binaries.
//!
//! A [`Spec`] names a Debian suite and a package list; [`image`] builds it once with
//! `debootstrap` and turns it into an ext4 image with `mke2fs -d` (no loop mount, no
//! privileges beyond what debootstrap needs), cached under
//! `~/.cache/dmabuf-virtio-gpu/rootfs/NAME-KEY.ext4`, where KEY is a hash of everything that
//! goes into it (suite, mirror, packages, this builder's version). A manifest of the
//! installed package versions is kept beside it. The guest boots it read-write through
//! QEMU's `snapshot=on`, so the cached image is never changed.
//!
//! Booting: [`write_initramfs`] makes a small busybox initramfs that loads the modules for
//! the root disk and for virtio-gpu, mounts `/dev/vda`, copies the lane's files into
//! `/lane` of the new root and switches to the lane's `/lane/init`, which frames its steps
//! on the results port like every other lane (`@@VMLANE step/end/done`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fetch::Kernel;
use crate::initramfs;
use crate::{run, run_output, step, Error};

/// Bumped whenever the way an image is built changes (part of the cache key).
const BUILDER_VERSION: u32 = 1;

/// Where Debian's packages come from.
const MIRROR: &str = "http://deb.debian.org/debian";

/// Modules the initramfs loads to mount the root disk (their dependencies come along;
/// ext4 asks the crypto API for crc32c at mount time, which modules.dep does not say).
const ROOT_DISK_MODULES: [&str; 3] = ["virtio_blk", "crc32c_generic", "ext4"];

/// What goes into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Short name, the first part of the image's file name.
    pub name: String,
    /// Debian suite (`trixie`: its Mesa 25 has the venus guest driver, bookworm's does not).
    pub suite: String,
    /// Packages installed on top of `--variant=minbase` (with their dependencies, without
    /// recommends).
    pub packages: Vec<String>,
}

/// Packages every image has: what `/lane/init` itself needs.
pub const BASE_PACKAGES: [&str; 2] = ["kmod", "procps"];

/// Packages of the `render` lane: Mesa's guest drivers (virgl in `libgl1-mesa-dri`, venus
/// as `virtio_icd` in `mesa-vulkan-drivers`), and the programs the lane runs.
pub const RENDER_PACKAGES: [&str; 9] = [
    "libgl1-mesa-dri",
    "libegl-mesa0",
    "libgles2",
    "libgbm1",
    "mesa-vulkan-drivers",
    "mesa-utils",
    "vulkan-tools",
    "kmscube",
    "glmark2-es2-drm",
];

/// Packages of the `wayland` lane: weston's demo clients (Debian ships `weston-simple-shm`
/// and `weston-simple-damage` in the `weston` package; its recommends, Mesa's drivers, are
/// not installed).
pub const WAYLAND_PACKAGES: [&str; 1] = ["weston"];

impl Spec {
    /// A trixie image with the base packages plus `extra`.
    pub fn trixie(name: &str, extra: &[&str]) -> Self {
        let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        packages.extend(extra.iter().map(|s| s.to_string()));
        Spec {
            name: name.to_string(),
            suite: "trixie".into(),
            packages,
        }
    }

    /// The render lane's image.
    pub fn render() -> Self {
        Spec::trixie("render", &RENDER_PACKAGES)
    }

    /// The wayland lane's image: bookworm, whose weston 10.0.1 clients are the ones the host
    /// tests run through the proxy too.
    pub fn wayland() -> Self {
        let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        packages.extend(WAYLAND_PACKAGES.iter().map(|s| s.to_string()));
        Spec {
            name: "wayland".to_string(),
            suite: "bookworm".into(),
            packages,
        }
    }

    /// The cache key: a hash of everything that decides the image's content.
    pub fn key(&self) -> String {
        let mut packages = self.packages.clone();
        packages.sort();
        packages.dedup();
        let text = format!(
            "builder {BUILDER_VERSION}\nsuite {}\nmirror {MIRROR}\npackages {}\n",
            self.suite,
            packages.join(" ")
        );
        format!("{:016x}", fnv1a(text.as_bytes()))
    }
}

/// FNV-1a, 64 bits: a stable hash for cache keys (std's hasher may change between Rust
/// versions).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The ext4 image.
    pub path: PathBuf,
    /// `dpkg-query` list of what is installed (package, version).
    pub manifest: PathBuf,
}

/// Returns the cached image for `spec`, building it first when missing.
pub fn image(cache: &Path, spec: &Spec) -> Result<Image, Error> {
    let dir = cache.join("rootfs");
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let stem = format!("{}-{}-{}", spec.name, spec.suite, spec.key());
    let image = Image {
        path: dir.join(format!("{stem}.ext4")),
        manifest: dir.join(format!("{stem}.manifest")),
    };
    if image.path.exists() && image.manifest.exists() {
        return Ok(image);
    }
    let root = dir.join(format!("{stem}.root"));
    let built = step(
        &format!(
            "rootfs: debootstrap {} with {} packages ({stem})",
            spec.suite,
            spec.packages.len()
        ),
        || {
            if root.exists() {
                fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
            }
            run(Command::new("debootstrap")
                .arg("--variant=minbase")
                .arg(format!("--include={}", spec.packages.join(",")))
                .arg(&spec.suite)
                .arg(&root)
                .arg(MIRROR))?;
            let manifest = run_output(Command::new("chroot").arg(&root).args([
                "dpkg-query",
                "-W",
                "-f",
                "${Package} ${Version}\\n",
            ]))?;
            slim(&root)?;
            Ok(manifest)
        },
    );
    let manifest = match built {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_dir_all(&root);
            return Err(e);
        }
    };
    let made = step(&format!("rootfs: mke2fs -d into {stem}.ext4"), || {
        let bytes = du_bytes(&root)?;
        // Room for the file system's own metadata and for the guest's writes (which go to
        // QEMU's snapshot overlay, but need free blocks in the file system all the same).
        let size_mib = bytes / (1 << 20) * 5 / 4 + 256;
        let partial = image.path.with_extension("ext4.partial");
        let _ = fs::remove_file(&partial);
        run(Command::new("mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "vmlane-root",
                "-E",
                "root_owner=0:0",
            ])
            .arg("-d")
            .arg(&root)
            .arg(&partial)
            .arg(format!("{size_mib}M")))?;
        fs::rename(&partial, &image.path).map_err(|e| Error::io(&image.path, e))?;
        fs::write(&image.manifest, &manifest).map_err(|e| Error::io(&image.manifest, e))
    });
    let _ = fs::remove_dir_all(&root);
    made?;
    prune(&dir, &spec.name, &stem);
    Ok(image)
}

/// Removes what a guest never reads (documentation, locales, apt's caches).
fn slim(root: &Path) -> Result<(), Error> {
    for dir in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/cache/apt",
        "var/lib/apt/lists",
    ] {
        let path = root.join(dir);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

fn du_bytes(root: &Path) -> Result<u64, Error> {
    let out = run_output(Command::new("du").args(["-sb"]).arg(root))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::Setup(format!("du printed {out:?}")))
}

/// Removes older images of the same name (another key), so the cache holds one per name.
fn prune(dir: &Path, name: &str, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file.starts_with(&format!("{name}-")) && !file.starts_with(keep) {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

/// QEMU arguments that attach `image` (hard-linked or copied into `lane_dir`, which a
/// chrooted QEMU sees) as the guest's `/dev/vda`, with writes kept in a throwaway overlay.
pub fn drive_args(image: &Image, lane_dir: &Path) -> Result<Vec<String>, Error> {
    let local = lane_dir.join("root.ext4");
    let _ = fs::remove_file(&local);
    if fs::hard_link(&image.path, &local).is_err() {
        fs::copy(&image.path, &local).map_err(|e| Error::io(&local, e))?;
    }
    Ok(vec![
        "-drive".into(),
        format!("file={},format=raw,if=virtio,snapshot=on", local.display()),
    ])
}

/// The lane's side of the guest: `/lane/init` (a POSIX shell script run by the root file
/// system's `/bin/sh`) and any files it needs under `/lane`.
pub struct LaneFiles<'a> {
    /// Files as (path under `/lane`, mode, contents); `init` is required.
    pub files: Vec<(&'a str, u32, Vec<u8>)>,
}

/// The start of every `/lane/init`: mounts, the results port, the step framing, and
/// `finish` to power off. Steps are appended as `step NAME COMMAND...` lines, then
/// `finish`.
pub const LANE_INIT_PRELUDE: &str = "#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/user/0 && chmod 700 /run/user/0
export HOME=/root XDG_RUNTIME_DIR=/run/user/0 PATH=/usr/sbin:/usr/bin:/sbin:/bin
stty -F /dev/ttyS1 raw -echo
exec </dev/ttyS1 >/dev/ttyS1 2>&1
step() { name=$1; shift; echo \"@@VMLANE step $name\"; \
(cd /tmp && timeout -s KILL 900 \"$@\"); echo \"@@VMLANE end $name rc=$?\"; }
finish() { echo \"@@VMLANE done\"; sync; /lane/busybox poweroff -f; }
";

/// Writes the initramfs that boots a root file system image: busybox, the modules for the
/// root disk and `modules` (loaded before the switch, so `/dev/dri` exists in the new root),
/// and the lane's files. It reports module loading as the step `modules` and then hands
/// over to `/lane/init`.
pub fn write_initramfs(
    path: &Path,
    kernel: &Kernel,
    modules: &[&str],
    lane: &LaneFiles<'_>,
) -> Result<(), Error> {
    if !lane.files.iter().any(|(p, _, _)| *p == "init") {
        return Err(Error::Setup(
            "a root file system lane needs /lane/init".into(),
        ));
    }
    let mut archive = initramfs::base()?;
    let mut wanted: Vec<&str> = ROOT_DISK_MODULES.to_vec();
    wanted.extend_from_slice(modules);
    let module_files = initramfs::add_modules(&mut archive, &kernel.modules, &wanted)?;
    archive.dir("lane");
    let busybox = Path::new("/bin/busybox");
    let data = fs::read(busybox).map_err(|e| Error::io(busybox, e))?;
    archive.file("lane/busybox", 0o755, &data);
    for (name, mode, data) in &lane.files {
        archive.file(&format!("lane/{name}"), *mode, data);
    }
    let init = format!(
        "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
stty -F /dev/ttyS1 raw -echo
exec </dev/ttyS1 >/dev/ttyS1 2>&1
echo \"@@VMLANE boot $(uname -r)\"
echo \"@@VMLANE step modules\"
pass=0; fail=0
for m in {modules}; do
  if insmod /lib/modules/$m; then echo \"ok insmod $m\"; pass=$((pass+1));
  else echo \"FAILED insmod $m\"; fail=$((fail+1)); fi
done
echo \"$pass passed, $fail failed, 0 skipped\"
echo \"@@VMLANE end modules rc=$fail\"
mkdir -p /newroot
if ! mount -t ext4 /dev/vda /newroot; then
  echo \"@@VMLANE runner: cannot mount the root file system /dev/vda\"
  poweroff -f
fi
mkdir -p /newroot/lane
cp -a /lane/. /newroot/lane/
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /lane/init
",
        modules = module_files.join(" ")
    );
    archive.file("init", 0o755, init.as_bytes());
    archive.finish(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_content_not_the_order() {
        let a = Spec::trixie("x", &["mesa-utils", "kmscube"]);
        let b = Spec::trixie("x", &["kmscube", "mesa-utils", "kmscube"]);
        assert_eq!(a.key(), b.key());
        let c = Spec::trixie("x", &["kmscube"]);
        assert_ne!(a.key(), c.key());
        let mut d = a.clone();
        d.suite = "bookworm".into();
        assert_ne!(a.key(), d.key());
        assert_eq!(a.key().len(), 16);
    }

    #[test]
    fn the_render_image_has_the_guest_drivers_and_programs() {
        let spec = Spec::render();
        assert_eq!(spec.suite, "trixie");
        for p in ["mesa-vulkan-drivers", "libgl1-mesa-dri", "kmscube", "kmod"] {
            assert!(spec.packages.iter().any(|q| q == p), "{p} missing");
        }
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
