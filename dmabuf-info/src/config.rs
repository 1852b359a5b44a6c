//! Configuration: platform override, which devices may access the buffers, which
//! `DMA_BUF_IOCTL_INFO` value set the kernel carries, and exporter quirks (like Mesa's driconf:
//! users and distros add them without a rebuild).
//!
//! ```toml
//! schema = 1                        # optional; the file format version (only 1 exists)
//! platform = "x86-intel"            # optional; overrides detection
//! devices = "non-coherent"          # optional; "non-coherent" | "coherent" | "cpu-only"
//! kernel_info_abi = "none"          # "none" | "v1" | "v2"
//! probe_render_nodes = true         # optional; try /dev/dri/renderD* when no DRM fd is given
//! cache_capacity = 4096             # optional; buffers remembered per Inspector
//!
//! [[exporter]]                      # quirks; first match wins, before the built-in table
//! name = "system-uncached"          # exact exporter name, or a glob with * ; "memfd" = memfds,
//!                                   # "memfd:NAME" = memfds of that name (glob)
//! cache = "write-combined"          # cached | write-combined | uncached | unknown
//! needs_sync = "no"                 # no | yes | unknown
//! stable = true
//! note = "vendor heap, WC mapping"  # optional, shown by the CLI
//! ```
//!
//! Each of `cache`, `needs_sync` and `stable` is optional in a quirk; a missing one is left to
//! the next source.
//!
//! Where the configuration comes from ([`Config::load_default`]):
//! 1. the file named by `$DMABUF_INFO_CONFIG`, if set: read strictly, any problem is an error
//!    (as for a file the caller names, [`Config::from_file`]);
//! 2. else the drop-in directories ([`Config::from_quirk_dirs`]): `*.toml` files of the vendor
//!    directory [`VENDOR_QUIRKS_DIR`] (what packages ship) and of the administrator's
//!    [`QUIRKS_DIR`]. A file in the later directory replaces the vendor file with the same
//!    name (an empty file, or a link to `/dev/null`, masks it). Files are then read in name
//!    order: quirks appended, later scalar keys win. A file with an unknown key, a bad value or
//!    a schema this version does not read is skipped with a [`ConfigWarning`] naming the file
//!    and the problem; it never makes loading fail. `$DMABUF_INFO_QUIRKS_DIRS`
//!    (colon-separated, lowest precedence first) replaces the two directories, for tests and
//!    non-standard layouts.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::Error;
use crate::info::{CacheAttr, KernelAbi, NeedsSync};
use crate::platform::{DeviceAccess, Platform};

/// Environment variable naming a configuration file.
pub const CONFIG_ENV: &str = "DMABUF_INFO_CONFIG";
/// Environment variable replacing the drop-in directories: colon-separated, lowest precedence
/// first.
pub const QUIRKS_DIRS_ENV: &str = "DMABUF_INFO_QUIRKS_DIRS";
/// Drop-in directory for quirk files shipped by packages.
pub const VENDOR_QUIRKS_DIR: &str = "/usr/share/dmabuf-info/quirks.d";
/// Drop-in directory for the administrator's quirk files; a file here replaces the vendor file
/// of the same name.
pub const QUIRKS_DIR: &str = "/etc/dmabuf-info/quirks.d";
/// The configuration file format this version reads (`schema = 1`; a file without `schema`
/// is read as 1).
pub const SCHEMA: u32 = 1;

/// An exporter quirk from a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quirk {
    /// Exporter name or glob (`*` matches any run of characters); `memfd` matches memfds,
    /// `memfd:NAME` the memfds of that name.
    pub name: Arc<str>,
    /// Cache attribute, if the quirk sets it.
    pub cache: Option<CacheAttr>,
    /// SYNC requirement, if the quirk sets it.
    pub needs_sync: Option<NeedsSync>,
    /// Stability, if the quirk sets it.
    pub stable: Option<bool>,
    /// Free text shown by the CLI.
    pub note: Option<String>,
}

impl Quirk {
    /// Whether this quirk applies to `exporter`.
    pub fn matches(&self, exporter: &str) -> bool {
        glob_match(&self.name, exporter)
    }
}

/// A drop-in file that was skipped (or a directory that could not be read), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file or directory.
    pub path: PathBuf,
    /// What is wrong with it, naming the key where one is at fault.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// Library configuration. `Default` = built-in table only, kernel ABI "none", platform
/// detected, device access from the platform, render nodes probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Platform override; `None` = detect.
    pub platform: Option<Platform>,
    /// Which devices may access the buffers; `None` = [`Platform::default_device_access`].
    pub devices: Option<DeviceAccess>,
    /// Which `DMA_BUF_IOCTL_INFO` value set the running kernel carries; `None` = do not trust
    /// any answer it gives (the upstream kernel has none).
    pub kernel_info_abi: Option<KernelAbi>,
    /// Quirks, first match wins.
    pub quirks: Vec<Quirk>,
    /// Try `/dev/dri/renderD*` when the caller passes no DRM fd.
    pub probe_render_nodes: bool,
    /// How many buffers an [`crate::Inspector`] remembers before it forgets them all.
    pub cache_capacity: usize,
    /// Files this configuration was read from.
    pub files: Vec<PathBuf>,
    /// Drop-in files that were skipped, and why.
    pub warnings: Vec<ConfigWarning>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            platform: None,
            devices: None,
            kernel_info_abi: None,
            quirks: Vec::new(),
            probe_render_nodes: true,
            cache_capacity: 4096,
            files: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    schema: Option<u32>,
    platform: Option<String>,
    devices: Option<String>,
    kernel_info_abi: Option<String>,
    probe_render_nodes: Option<bool>,
    cache_capacity: Option<usize>,
    #[serde(default)]
    exporter: Vec<RawQuirk>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuirk {
    name: String,
    cache: Option<String>,
    needs_sync: Option<String>,
    stable: Option<bool>,
    note: Option<String>,
}

fn config_error(path: Option<&Path>, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.map(Path::to_path_buf),
        message: message.into(),
    }
}

/// A TOML error as one line: `line N: message` (the message names the key at fault).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_string(),
    }
}

impl Config {
    /// Parses a TOML configuration.
    pub fn from_toml_str(s: &str) -> Result<Config, Error> {
        Self::parse(s, None)
    }

    /// Reads and parses a TOML configuration file; any problem is an error.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error(Some(path), format!("cannot read: {e}")))?;
        let mut c = Self::parse(&text, Some(path))?;
        c.files.push(path.to_path_buf());
        Ok(c)
    }

    /// The default configuration search (see the module docs). Fails only for a file named
    /// by `$DMABUF_INFO_CONFIG`; problems with drop-in files are [`Config::warnings`].
    pub fn load_default() -> Result<Config, Error> {
        if let Some(path) = std::env::var_os(CONFIG_ENV) {
            if !path.is_empty() {
                return Config::from_file(Path::new(&path));
            }
        }
        Ok(Config::from_quirk_dirs(&Config::quirk_dirs()))
    }

    /// The drop-in directories, lowest precedence first: `$DMABUF_INFO_QUIRKS_DIRS` if set,
    /// else [`VENDOR_QUIRKS_DIR`] and [`QUIRKS_DIR`].
    pub fn quirk_dirs() -> Vec<PathBuf> {
        match std::env::var_os(QUIRKS_DIRS_ENV) {
            Some(dirs) => std::env::split_paths(&dirs)
                .filter(|d| !d.as_os_str().is_empty())
                .collect(),
            None => vec![PathBuf::from(VENDOR_QUIRKS_DIR), PathBuf::from(QUIRKS_DIR)],
        }
    }

    /// Reads the `*.toml` files of `dirs` (lowest precedence first): a file replaces the
    /// earlier directories' file of the same name; the chosen files are read in name order
    /// and merged. A missing directory is no problem; a file that cannot be read or parsed is
    /// skipped and reported in [`Config::warnings`] (and logged with `log::warn!`), never an
    /// error.
    pub fn from_quirk_dirs(dirs: &[PathBuf]) -> Config {
        let mut config = Config::default();
        let mut chosen: BTreeMap<OsString, PathBuf> = BTreeMap::new();
        for dir in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    config.warnings.push(ConfigWarning {
                        path: dir.clone(),
                        message: format!("cannot list the directory: {e}"),
                    });
                    continue;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let is_toml = Path::new(&name).extension().is_some_and(|x| x == "toml");
                if is_toml && !name.to_string_lossy().starts_with('.') {
                    chosen.insert(name, entry.path());
                }
            }
        }
        for path in chosen.into_values() {
            match Config::from_file(&path) {
                Ok(c) => config.merge(c),
                Err(e) => config.warnings.push(ConfigWarning {
                    message: match e {
                        Error::Config { message, .. } => format!("{message}; file skipped"),
                        other => format!("{other}; file skipped"),
                    },
                    path,
                }),
            }
        }
        for w in &config.warnings {
            log::warn!("dmabuf-info configuration: {w}");
        }
        config
    }

    /// Merges `later` into `self`: quirks appended, scalar keys of `later` win when set (for
    /// `probe_render_nodes` and `cache_capacity`: when different from the default).
    pub fn merge(&mut self, later: Config) {
        if later.platform.is_some() {
            self.platform = later.platform;
        }
        if later.devices.is_some() {
            self.devices = later.devices;
        }
        if later.kernel_info_abi.is_some() {
            self.kernel_info_abi = later.kernel_info_abi;
        }
        let defaults = Config::default();
        if later.probe_render_nodes != defaults.probe_render_nodes {
            self.probe_render_nodes = later.probe_render_nodes;
        }
        if later.cache_capacity != defaults.cache_capacity {
            self.cache_capacity = later.cache_capacity;
        }
        self.quirks.extend(later.quirks);
        self.files.extend(later.files);
        self.warnings.extend(later.warnings);
    }

    /// The first quirk matching `exporter`.
    pub fn quirk_for(&self, exporter: &str) -> Option<&Quirk> {
        self.quirks.iter().find(|q| q.matches(exporter))
    }

    /// The first quirk for a memfd named `name`: `memfd` matches every memfd,
    /// `memfd:NAME` (glob) only those whose name (`memfd_create`'s) matches.
    pub fn memfd_quirk(&self, name: Option<&str>) -> Option<&Quirk> {
        let named = name.map(|n| format!("memfd:{n}"));
        self.quirks
            .iter()
            .find(|q| q.matches("memfd") || named.as_deref().is_some_and(|n| q.matches(n)))
    }

    fn parse(s: &str, path: Option<&Path>) -> Result<Config, Error> {
        let raw: RawConfig =
            toml::from_str(s).map_err(|e| config_error(path, toml_error(s, &e)))?;
        match raw.schema {
            None | Some(SCHEMA) => {}
            Some(v) if v > SCHEMA => {
                return Err(config_error(
                    path,
                    format!(
                        "schema = {v}: written for a newer dmabuf-info (this one reads schema {SCHEMA})"
                    ),
                ))
            }
            Some(v) => {
                return Err(config_error(
                    path,
                    format!("schema = {v}: no such schema (this dmabuf-info reads schema {SCHEMA})"),
                ))
            }
        }
        let platform = match raw.platform.as_deref() {
            None => None,
            Some(p) => Some(
                p.parse::<Platform>()
                    .map_err(|e| config_error(path, format!("platform: {e}")))?,
            ),
        };
        let devices = match raw.devices.as_deref() {
            None => None,
            Some(d) => Some(
                d.parse::<DeviceAccess>()
                    .map_err(|e| config_error(path, format!("devices: {e}")))?,
            ),
        };
        let kernel_info_abi = match raw.kernel_info_abi.as_deref() {
            None | Some("none") => None,
            Some("v1") => Some(KernelAbi::V1),
            Some("v2") => Some(KernelAbi::V2),
            Some(other) => {
                return Err(config_error(
                    path,
                    format!("kernel_info_abi = \"{other}\": expected \"none\", \"v1\" or \"v2\""),
                ))
            }
        };
        let mut quirks = Vec::with_capacity(raw.exporter.len());
        for (i, q) in raw.exporter.into_iter().enumerate() {
            let at = format!("[[exporter]] #{} (name = \"{}\")", i + 1, q.name);
            if q.name.is_empty() {
                return Err(config_error(path, format!("{at}: name must not be empty")));
            }
            let cache = match q.cache.as_deref() {
                None => None,
                Some(c) => Some(CacheAttr::parse(c).ok_or_else(|| {
                    config_error(path, format!("{at}: cache = \"{c}\": expected cached, write-combined, uncached or unknown"))
                })?),
            };
            let needs_sync = match q.needs_sync.as_deref() {
                None => None,
                Some(n) => Some(NeedsSync::parse(n).ok_or_else(|| {
                    config_error(
                        path,
                        format!("{at}: needs_sync = \"{n}\": expected no, yes or unknown"),
                    )
                })?),
            };
            if cache.is_none() && needs_sync.is_none() && q.stable.is_none() {
                return Err(config_error(
                    path,
                    format!("{at}: sets none of cache, needs_sync, stable"),
                ));
            }
            quirks.push(Quirk {
                name: Arc::from(q.name.as_str()),
                cache,
                needs_sync,
                stable: q.stable,
                note: q.note,
            });
        }
        let defaults = Config::default();
        Ok(Config {
            platform,
            devices,
            kernel_info_abi,
            quirks,
            probe_render_nodes: raw
                .probe_render_nodes
                .unwrap_or(defaults.probe_render_nodes),
            cache_capacity: raw.cache_capacity.unwrap_or(defaults.cache_capacity).max(1),
            files: Vec::new(),
            warnings: Vec::new(),
        })
    }
}

/// Glob match where `*` matches any (possibly empty) run of characters; everything else is
/// literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("system", "system"));
        assert!(!glob_match("system", "system-uncached"));
        assert!(glob_match("*-uncached", "system-uncached"));
        assert!(glob_match("*cma*", "default_cma_region"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn full_config_parses() {
        let c = Config::from_toml_str(
            r#"
            schema = 1
            platform = "x86-amd"
            devices = "cpu-only"
            kernel_info_abi = "v2"
            probe_render_nodes = false
            [[exporter]]
            name = "system-uncached"
            cache = "write-combined"
            needs_sync = "no"
            stable = true
            [[exporter]]
            name = "memfd"
            needs_sync = "yes"
            "#,
        )
        .unwrap();
        assert_eq!(c.platform, Some(Platform::X86Amd));
        assert_eq!(c.devices, Some(DeviceAccess::CpuOnly));
        assert_eq!(c.kernel_info_abi, Some(KernelAbi::V2));
        assert!(!c.probe_render_nodes);
        assert_eq!(c.quirks.len(), 2);
        assert_eq!(c.quirks[0].cache, Some(CacheAttr::WriteCombined));
        assert_eq!(c.quirks[1].cache, None);
        assert_eq!(
            c.quirk_for("memfd").unwrap().needs_sync,
            Some(NeedsSync::Yes)
        );
        assert!(c.quirk_for("udmabuf").is_none());
    }

    #[test]
    fn empty_config_is_default() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
        let c = Config::from_toml_str("kernel_info_abi = \"none\"").unwrap();
        assert_eq!(c.kernel_info_abi, None);
    }

    #[test]
    fn bad_values_are_reported() {
        for (text, needle) in [
            ("platform = \"vax\"", "vax"),
            ("kernel_info_abi = \"v3\"", "v3"),
            ("[[exporter]]\nname = \"x\"\ncache = \"warm\"", "warm"),
            (
                "[[exporter]]\nname = \"x\"\nneeds_sync = \"maybe\"",
                "maybe",
            ),
            ("[[exporter]]\nname = \"x\"", "sets none"),
            ("[[exporter]]\nname = \"\"\nstable = true", "empty"),
            ("colour = 1", "colour"),
            (
                "\n\n[[exporter]]\nname = \"x\"\nstabel = true",
                "line 5: unknown field `stabel`",
            ),
            ("devices = \"some\"", "devices"),
            ("schema = 2", "newer dmabuf-info"),
            ("schema = 0", "no such schema"),
        ] {
            let err = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err}");
        }
    }

    #[test]
    fn merge_appends_quirks_and_overrides_scalars() {
        let mut a = Config::from_toml_str(
            "platform = \"arm64\"\n[[exporter]]\nname = \"a\"\nstable = true",
        )
        .unwrap();
        let b = Config::from_toml_str(
            "kernel_info_abi = \"v1\"\n[[exporter]]\nname = \"b\"\nstable = false",
        )
        .unwrap();
        a.merge(b);
        assert_eq!(a.platform, Some(Platform::Arm64));
        assert_eq!(a.kernel_info_abi, Some(KernelAbi::V1));
        assert_eq!(
            a.quirks.iter().map(|q| &*q.name).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}
