//! Configuration: platform override, which `DMA_BUF_IOCTL_INFO` value set the kernel carries,
//! and exporter quirks (like Mesa's driconf: users and distros add them without a rebuild).
//!
//! ```toml
//! platform = "x86-intel"            # optional; overrides detection
//! kernel_info_abi = "none"          # "none" | "v1" | "v2"
//! probe_render_nodes = true         # optional; try /dev/dri/renderD* when no DRM fd is given
//! cache_capacity = 4096             # optional; buffers remembered per Inspector
//!
//! [[exporter]]                      # quirks; first match wins, before the built-in table
//! name = "system-uncached"          # exact exporter name, or a glob with * ; "memfd" = memfds
//! cache = "write-combined"          # cached | write-combined | uncached | unknown
//! needs_sync = "no"                 # no | yes | unknown
//! stable = true
//! note = "vendor heap, WC mapping"  # optional, shown by the CLI
//! ```
//!
//! Each of `cache`, `needs_sync` and `stable` is optional in a quirk; a missing one is left to
//! the next source. Default configuration search ([`Config::load_default`]): the file named by
//! `$DMABUF_INFO_CONFIG` if set (an error if unreadable), else every
//! `/etc/dmabuf-info/quirks.d/*.toml` in name order (quirks appended, later scalar keys win),
//! else the built-in defaults.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::Error;
use crate::info::{CacheAttr, KernelAbi, NeedsSync};
use crate::platform::Platform;

/// Environment variable naming a configuration file.
pub const CONFIG_ENV: &str = "DMABUF_INFO_CONFIG";
/// Directory of drop-in quirk files.
pub const QUIRKS_DIR: &str = "/etc/dmabuf-info/quirks.d";

/// An exporter quirk from a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quirk {
    /// Exporter name or glob (`*` matches any run of characters); `memfd` matches memfds.
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

/// Library configuration. `Default` = built-in table only, kernel ABI "none", platform
/// detected, render nodes probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Platform override; `None` = detect.
    pub platform: Option<Platform>,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            platform: None,
            kernel_info_abi: None,
            quirks: Vec::new(),
            probe_render_nodes: true,
            cache_capacity: 4096,
            files: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    platform: Option<String>,
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

impl Config {
    /// Parses a TOML configuration.
    pub fn from_toml_str(s: &str) -> Result<Config, Error> {
        Self::parse(s, None)
    }

    /// Reads and parses a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error(Some(path), format!("cannot read: {e}")))?;
        let mut c = Self::parse(&text, Some(path))?;
        c.files.push(path.to_path_buf());
        Ok(c)
    }

    /// The default configuration search (see the module docs).
    pub fn load_default() -> Result<Config, Error> {
        if let Some(path) = std::env::var_os(CONFIG_ENV) {
            if !path.is_empty() {
                return Config::from_file(Path::new(&path));
            }
        }
        let mut files: Vec<PathBuf> = match std::fs::read_dir(QUIRKS_DIR) {
            Ok(dir) => dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(_) => return Ok(Config::default()),
        };
        files.sort();
        let mut config = Config::default();
        for f in files {
            config.merge(Config::from_file(&f)?);
        }
        Ok(config)
    }

    /// Merges `later` into `self`: quirks appended, scalar keys of `later` win when set (for
    /// `probe_render_nodes` and `cache_capacity`: when different from the default).
    pub fn merge(&mut self, later: Config) {
        if later.platform.is_some() {
            self.platform = later.platform;
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
    }

    /// The first quirk matching `exporter`.
    pub fn quirk_for(&self, exporter: &str) -> Option<&Quirk> {
        self.quirks.iter().find(|q| q.matches(exporter))
    }

    fn parse(s: &str, path: Option<&Path>) -> Result<Config, Error> {
        let raw: RawConfig = toml::from_str(s).map_err(|e| config_error(path, e.to_string()))?;
        let platform = match raw.platform.as_deref() {
            None => None,
            Some(p) => Some(
                p.parse::<Platform>()
                    .map_err(|e| config_error(path, e.to_string()))?,
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
            kernel_info_abi,
            quirks,
            probe_render_nodes: raw
                .probe_render_nodes
                .unwrap_or(defaults.probe_render_nodes),
            cache_capacity: raw.cache_capacity.unwrap_or(defaults.cache_capacity).max(1),
            files: Vec::new(),
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
            platform = "x86-amd"
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
