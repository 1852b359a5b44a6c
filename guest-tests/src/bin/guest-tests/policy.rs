//! `guest-tests map-policy`: the backend's RESOURCE_MAP_BLOB decision on every real
//! dma-buf exporter of the guest (issue 6 item 7: no buffer whose needs-SYNC answer is Yes
//! or Unknown is ever mapped).
//!
//! For udmabuf, the system dma-heap, vgem (PRIME, exporter `drm`) and virtio-gpu's own
//! PRIME exports, a real buffer goes through `vhost_user_gpu::advisor::DmabufInfoAdvisor`,
//! the very advisor the backend asks before `SHMEM_MAP`, with the configuration the binary
//! loads by default. A buffer is then "mapped" (`mmap` + write + read back, what the
//! frontend does with the fd of a `SHMEM_MAP`) only when the advisor allows it. Checked:
//! every allowed buffer answers needs-SYNC No and gets the cache type `dmabuf-info`'s
//! policy decides; every buffer answering Yes or Unknown is refused; a configuration quirk
//! that says `needs_sync = "yes"` for the exporter makes the advisor refuse it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use dmabuf_info::{uapi, Config, Decision, Inspector, NeedsSync};
use guest_tests::report::Outcome;
use vhost_user_gpu::advisor::DmabufInfoAdvisor;
use vhost_user_gpu::device::ports::{MapAdvice, MapAdvisor};

use crate::{drm, Runner};

const SIZE: u64 = 64 << 10;

/// One real buffer and the DRM fd a GPU allocator would pass with it.
struct Buffer {
    label: &'static str,
    fd: OwnedFd,
    drm: Option<OwnedFd>,
}

/// What happened to one buffer.
struct Verdict {
    label: &'static str,
    needs_sync: NeedsSync,
    mapped: bool,
}

/// The first DRM card node whose driver is `name` (DRM_IOCTL_VERSION).
fn card_of_driver(name: &str) -> Option<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("card"))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().find(|p| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .ok()
            .and_then(|f| uapi::drm_driver_name(f.as_fd()).ok())
            .is_some_and(|n| n == name)
    })
}

/// A 64x64 dumb buffer of the card driven by `driver`, exported with PRIME.
fn prime_dumb(driver: &str) -> Result<(OwnedFd, OwnedFd), String> {
    let node = card_of_driver(driver).ok_or_else(|| format!("no DRM card driven by {driver}"))?;
    let card: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .map_err(|e| format!("{}: {e}", node.display()))?
        .into();
    let dumb = uapi::drm_mode_create_dumb(card.as_fd(), 64, 64, 32)
        .map_err(|e| format!("{driver}: MODE_CREATE_DUMB: {e}"))?;
    let fd = uapi::drm_prime_handle_to_fd(card.as_fd(), dumb.handle)
        .map_err(|e| format!("{driver}: PRIME_HANDLE_TO_FD: {e}"))?;
    Ok((fd, card))
}

fn buffers(runner: &mut Runner) -> Vec<Buffer> {
    let mut out = Vec::new();
    let mut make = |label: &'static str, made: Result<(OwnedFd, Option<OwnedFd>), String>| {
        let mut buffer = None;
        runner.case(
            &format!("map policy: {label}: a real buffer"),
            || match made {
                Ok((fd, drm)) => {
                    buffer = Some(Buffer { label, fd, drm });
                    Outcome::Passed
                }
                Err(e) => Outcome::Failed(e),
            },
        );
        out.extend(buffer);
    };
    make(
        "udmabuf",
        drm::udmabuf(SIZE)
            .map(|fd| (fd, None))
            .map_err(|e| format!("udmabuf: {e}")),
    );
    make(
        "system heap",
        drm::system_heap(SIZE)
            .map(|fd| (fd, None))
            .map_err(|e| format!("system heap: {e}")),
    );
    make(
        "vgem (PRIME)",
        prime_dumb("vgem").map(|(fd, card)| (fd, Some(card))),
    );
    make(
        "virtio-gpu (PRIME)",
        prime_dumb("virtio_gpu").map(|(fd, card)| (fd, Some(card))),
    );
    out
}

/// What the frontend does with a `SHMEM_MAP` fd: map it shared, write, read back.
fn map_like_the_frontend(fd: BorrowedFd<'_>, len: usize) -> Result<(), String> {
    let mut mapping = drm::Mapping::new(&fd, 0, len).map_err(|e| format!("mmap: {e}"))?;
    let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    mapping.bytes_mut().copy_from_slice(&pattern);
    if mapping.bytes() != pattern.as_slice() {
        return Err("the mapping does not read back what was written".into());
    }
    Ok(())
}

/// The decision path for one buffer, with the binary's default configuration.
fn decide_and_map(buf: &Buffer, config: &Config) -> Result<Verdict, String> {
    let drm = buf.drm.as_ref().map(|d| d.as_fd());
    let inspector = Inspector::new(config.clone());
    let info = inspector
        .inspect(buf.fd.as_fd(), drm)
        .map_err(|e| format!("dmabuf-info: {e}"))?;
    let advisor = DmabufInfoAdvisor::new(config.clone(), None);
    let advice = advisor.advise(buf.fd.as_fd(), drm);
    println!(
        "# {}: exporter {:?}, needs_sync {} ({}), cache {} ({}), platform {}, advice {:?}",
        buf.label,
        info.exporter,
        info.needs_sync.value.as_str(),
        info.needs_sync.source,
        info.cache.value.as_str(),
        info.cache.source,
        advisor.platform(),
        advice
    );
    let mapped = match (&advice, info.needs_sync.value) {
        (MapAdvice::Allow { map_info, .. }, NeedsSync::No) => {
            match inspector.decide(&info) {
                Decision::Allow(cache) if cache.virtio_value() == *map_info => {}
                other => {
                    return Err(format!(
                        "advisor allows map_info {map_info}, dmabuf-info's policy decides {other}"
                    ))
                }
            }
            map_like_the_frontend(buf.fd.as_fd(), info.size.min(SIZE) as usize)?;
            true
        }
        (MapAdvice::Allow { map_info, source }, answer) => {
            return Err(format!(
                "advisor allows mapping (map_info {map_info}, {source}) a buffer whose \
                 needs-SYNC answer is {}",
                answer.as_str()
            ))
        }
        (MapAdvice::Refuse { .. }, _) => false,
    };
    Ok(Verdict {
        label: buf.label,
        needs_sync: info.needs_sync.value,
        mapped,
    })
}

/// A quirk saying the exporter needs SYNC must make the advisor refuse.
fn quirk_yes_refuses(buf: &Buffer, exporter: &str) -> Outcome {
    let toml = format!("[[exporter]]\nname = \"{exporter}\"\nneeds_sync = \"yes\"\n");
    let config = match Config::from_toml_str(&toml) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("quirk: {e}")),
    };
    let drm = buf.drm.as_ref().map(|d| d.as_fd());
    match DmabufInfoAdvisor::new(config, None).advise(buf.fd.as_fd(), drm) {
        MapAdvice::Refuse { reason } if reason.contains("quirk") => Outcome::Passed,
        MapAdvice::Refuse { reason } => Outcome::Failed(format!(
            "refused, but the reason does not name the quirk: {reason}"
        )),
        MapAdvice::Allow { map_info, source } => Outcome::Failed(format!(
            "a buffer configured as needing SYNC was allowed: map_info {map_info} ({source})"
        )),
    }
}

/// Runs the map-policy cases.
pub fn map_policy(runner: &mut Runner) {
    let config = match Config::load_default() {
        Ok(c) => c,
        Err(e) => {
            runner.case("map policy: the default configuration loads", || {
                Outcome::Failed(e.to_string())
            });
            return;
        }
    };
    let bufs = buffers(runner);
    let mut verdicts = Vec::new();
    for buf in &bufs {
        let mut verdict = None;
        runner.case(
            &format!(
                "map policy: {}: allowed only when needs-SYNC is No, then mapped",
                buf.label
            ),
            || match decide_and_map(buf, &config) {
                Ok(v) => {
                    verdict = Some(v);
                    Outcome::Passed
                }
                Err(e) => Outcome::Failed(e),
            },
        );
        verdicts.extend(verdict);
        let exporter = Inspector::new(config.clone())
            .inspect(buf.fd.as_fd(), None)
            .map(|i| i.exporter);
        runner.case(
            &format!(
                "map policy: {}: a needs_sync = yes quirk is refused",
                buf.label
            ),
            || match &exporter {
                Ok(name) => quirk_yes_refuses(buf, name),
                Err(e) => Outcome::Failed(format!("dmabuf-info: {e}")),
            },
        );
    }
    runner.case(
        "map policy: every exporter here decided; Yes/Unknown never mapped",
        || {
            let summary: Vec<String> = verdicts
                .iter()
                .map(|v| {
                    format!(
                        "{}: {} -> {}",
                        v.label,
                        v.needs_sync.as_str(),
                        if v.mapped { "mapped" } else { "refused" }
                    )
                })
                .collect();
            println!("# {}", summary.join("; "));
            if verdicts.len() != 4 {
                return Outcome::Failed(format!(
                    "only {} of the 4 exporters were decided: {summary:?}",
                    verdicts.len()
                ));
            }
            if let Some(v) = verdicts
                .iter()
                .find(|v| v.mapped && v.needs_sync != NeedsSync::No)
            {
                return Outcome::Failed(format!("{} was mapped: {summary:?}", v.label));
            }
            if !verdicts.iter().any(|v| v.mapped) {
                return Outcome::Failed(format!("nothing was mappable: {summary:?}"));
            }
            Outcome::Passed
        },
    );
}
