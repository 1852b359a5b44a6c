//! Fetching the pieces a lane needs, from Debian packages, cached under
//! `~/.cache/dmabuf-virtio-gpu/`:
//!
//! - `apt-backports/`: a private apt configuration (bookworm + bookworm-backports
//!   lists of its own; the system's sources are not touched), shared with
//!   `.ci/apt-backports`;
//! - `kernel/VERSION/`: the Debian 6.12 guest kernel from bookworm-backports,
//!   unpacked with its modules and a `modules.dep` made by `depmod -b`;
//! - `trixie-root/`: a `debootstrap --variant=minbase trixie` root with QEMU 11.1
//!   from trixie-backports, run through `chroot`.
//!
//! QEMU 10.0 is installed into the system from bookworm-backports (it is the
//! system's `qemu-system-x86_64`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::{run, run_output, step, Error};

/// Where everything is cached.
pub fn cache_root() -> Result<PathBuf, Error> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME")
                .ok_or_else(|| Error::Setup("neither XDG_CACHE_HOME nor HOME is set".into()))?;
            PathBuf::from(home).join(".cache")
        }
    };
    let root = base.join("dmabuf-virtio-gpu");
    fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    Ok(root)
}

/// The private apt configuration for bookworm-backports.
pub struct Apt {
    root: PathBuf,
}

const BOOKWORM_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
";

impl Apt {
    /// Sets up the private configuration and refreshes its lists when they are
    /// older than a day (or missing).
    pub fn new(cache: &Path) -> Result<Self, Error> {
        let root = cache.join("apt-backports");
        for dir in ["lists/partial", "archives/partial"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let sources = root.join("sources.list");
        fs::write(&sources, BOOKWORM_SOURCES).map_err(|e| Error::io(&sources, e))?;
        let apt = Apt { root };
        if !apt.lists_fresh()? {
            step(
                "apt: refreshing the private bookworm-backports lists",
                || {
                    run(Command::new("apt-get")
                        .args(apt.options())
                        .args(["update", "-qq"]))
                },
            )?;
        }
        Ok(apt)
    }

    fn lists_fresh(&self) -> Result<bool, Error> {
        let lists = self.root.join("lists");
        let entries = fs::read_dir(&lists).map_err(|e| Error::io(&lists, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.contains("bookworm-backports") && name.contains("Packages") {
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                return Ok(age.is_some_and(|a| a < Duration::from_secs(24 * 3600)));
            }
        }
        Ok(false)
    }

    fn options(&self) -> Vec<String> {
        let r = self.root.display();
        vec![
            "-o".into(),
            format!("Dir::Etc::SourceList={r}/sources.list"),
            "-o".into(),
            "Dir::Etc::SourceParts=/dev/null".into(),
            "-o".into(),
            format!("Dir::State::Lists={r}/lists"),
            "-o".into(),
            format!("Dir::Cache::Archives={r}/archives"),
        ]
    }

    /// `apt-cache show PACKAGE` through the private configuration.
    fn show(&self, package: &str) -> Result<String, Error> {
        run_output(
            Command::new("apt-cache")
                .args(self.options())
                .args(["show", package]),
        )
    }

    /// Downloads one exact package version into `dir`.
    fn download(&self, package: &str, version: &str, dir: &Path) -> Result<PathBuf, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        run(Command::new("apt-get")
            .current_dir(dir)
            .args(self.options())
            .args(["download", "-qq", &format!("{package}={version}")]))?;
        let prefix = format!("{package}_");
        let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        entries
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .ok_or_else(|| Error::Setup(format!("apt-get download left no {package} .deb")))
    }

    /// Installs packages into the system from bookworm-backports.
    pub fn install_backports(&self, packages: &[&str]) -> Result<(), Error> {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(self.options())
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "-t",
                "bookworm-backports",
            ])
            .args(packages))
    }
}

/// The unpacked guest kernel.
pub struct Kernel {
    /// Kernel release, e.g. `6.12.95+deb12-amd64`.
    pub release: String,
    /// The bzImage.
    pub image: PathBuf,
    /// `lib/modules/RELEASE`, with `modules.dep`.
    pub modules: PathBuf,
}

/// Resolves `linux-image-amd64` in bookworm-backports to its exact 6.12 image
/// package, downloads and unpacks it, and runs `depmod -b` on it.
pub fn kernel(cache: &Path, apt: &Apt) -> Result<Kernel, Error> {
    let meta = apt.show("linux-image-amd64/bookworm-backports")?;
    let (package, version) = meta
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .and_then(|deps| {
            deps.split(", ")
                .find(|d| d.starts_with("linux-image-6.12"))
                .and_then(|d| d.split_once(" (= "))
                .map(|(p, v)| (p.to_string(), v.trim_end_matches(')').to_string()))
        })
        .ok_or_else(|| {
            Error::Setup(
                "linux-image-amd64 in bookworm-backports does not depend on a 6.12 image".into(),
            )
        })?;
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_string();
    let dir = cache.join("kernel").join(&release);
    let kernel = Kernel {
        image: dir.join(format!("boot/vmlinuz-{release}")),
        modules: dir.join(format!("lib/modules/{release}")),
        release: release.clone(),
    };
    let stamp = dir.join(".complete");
    if stamp.exists() {
        return Ok(kernel);
    }
    step(&format!("kernel: fetching {package} {version}"), || {
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let debs = cache.join("debs");
        let deb = apt.download(&package, &version, &debs)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        run(Command::new("depmod").arg("-b").arg(&dir).arg(&release))?;
        fs::remove_file(&deb).map_err(|e| Error::io(&deb, e))?;
        fs::write(&stamp, format!("{package} {version}\n")).map_err(|e| Error::io(&stamp, e))
    })?;
    Ok(kernel)
}

/// QEMU 10.0 as the system's `qemu-system-x86_64` (installed from
/// bookworm-backports when the system has another version).
pub fn qemu10(apt: &Apt) -> Result<PathBuf, Error> {
    let binary = PathBuf::from("/usr/bin/qemu-system-x86_64");
    let helper = Path::new("/usr/lib/qemu/vhost-user-gpu");
    if qemu_version(&binary).is_some_and(|v| v.starts_with("10.0")) && helper.exists() {
        return Ok(binary);
    }
    step(
        "qemu 10.0: installing qemu-system-x86 from bookworm-backports",
        || apt.install_backports(&["qemu-system-x86", "qemu-system-gui"]),
    )?;
    match qemu_version(&binary) {
        Some(v) if v.starts_with("10.0") => Ok(binary),
        other => Err(Error::Setup(format!(
            "after installing from bookworm-backports, {} reports version {other:?}, not 10.0",
            binary.display()
        ))),
    }
}

/// The trixie root that carries QEMU 11.1 from trixie-backports.
pub fn trixie_root(cache: &Path) -> Result<PathBuf, Error> {
    let root = cache.join("trixie-root");
    let stamp = cache.join("trixie-root.complete");
    if stamp.exists() {
        return Ok(root);
    }
    step("qemu 11.1: debootstrap --variant=minbase trixie", || {
        if root.exists() {
            fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        }
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "trixie"])
            .arg(&root)
            .arg("http://deb.debian.org/debian"))
    })?;
    step(
        "qemu 11.1: installing qemu-system-x86 from trixie-backports",
        || install_from_trixie_backports(&root, &["qemu-system-x86"]),
    )?;
    let version = run_output(
        Command::new("chroot")
            .arg(&root)
            .args(["qemu-system-x86_64", "--version"]),
    )?;
    if !version.contains("version 11.1") {
        return Err(Error::Setup(format!(
            "the trixie root's QEMU is not 11.1: {}",
            version.lines().next().unwrap_or("")
        )));
    }
    fs::write(&stamp, version).map_err(|e| Error::io(&stamp, e))?;
    Ok(root)
}

/// The version a QEMU binary reports, e.g. `10.0.2`.
pub fn qemu_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("version ").nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// Installs `packages` from trixie-backports into the trixie root `root` (its own apt
/// sources, never the host's), then empties its package cache.
pub(crate) fn install_from_trixie_backports(root: &Path, packages: &[&str]) -> Result<(), Error> {
    let sources = root.join("etc/apt/sources.list.d/trixie-backports.sources");
    fs::write(
        &sources,
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie-backports\n\
         Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .map_err(|e| Error::io(&sources, e))?;
    chroot_apt_install(root, &["-t", "trixie-backports"], packages)
}

/// `apt-get update`, then installs `packages` (without recommends; `options` go to
/// `apt-get install`) in the root `root` with its own apt sources, then empties its package
/// cache.
pub(crate) fn chroot_apt_install(
    root: &Path,
    options: &[&str],
    packages: &[&str],
) -> Result<(), Error> {
    run(Command::new("chroot")
        .arg(root)
        .args(["apt-get", "update", "-qq"]))?;
    run(Command::new("chroot")
        .arg(root)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["apt-get", "install", "-y", "-qq", "--no-install-recommends"])
        .args(options)
        .args(packages))?;
    run(Command::new("chroot").arg(root).args(["apt-get", "clean"]))
}
