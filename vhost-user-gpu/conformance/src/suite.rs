//! The conformance suite runner (libtest-mimic), shared by `vhost-user-gpu/tests` and the
//! `suite` example.
//!
//! The backend is ours unless `VUG_BACKEND=/path` (plus optionally
//! `VUG_BACKEND_PEER=qemu|vhost-device-gpu|ours`) names another. Before listing the cases the
//! runner starts the backend once to learn what it negotiates; a case whose needs are not
//! met is reported *ignored* with the reason, never passed.

use std::path::Path;

use libtest_mimic::{Arguments, Failed, Trial};

use crate::cases::{self, Case, Harness, Need};
use crate::frontend::{BackendSpec, Frontend, Peer};
use vhost::vhost_user::VhostUserProtocolFeatures;

/// What the backend under test negotiated with the default frontend.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Acked virtio features.
    pub features: u64,
    /// Negotiated protocol features.
    pub protocol: VhostUserProtocolFeatures,
    /// Host-visible region size (0 without one).
    pub region_size: u64,
    /// Our backend with `--capset virgl`: `Ok` when it started with a virgl renderer, else
    /// why not (not our backend, or no renderer on this host).
    pub renderer: Result<(), String>,
}

impl Capabilities {
    /// Starts the backend once and records what it negotiates.
    pub fn probe(harness: &Harness) -> crate::Result<Self> {
        let fe = harness.spawn()?;
        Ok(Self {
            features: fe.acked_features(),
            protocol: fe.protocol_features(),
            region_size: fe.shmem().map_or(0, |r| r.size()),
            renderer: probe_renderer(harness),
        })
    }

    /// Why `need` is not met, if it is not.
    pub fn unmet(&self, peer: Peer, need: &Need) -> Option<String> {
        self.unmet_need(peer, need).map(|u| u.reason)
    }

    /// Why `need` is not met, and whether the backend (rather than this host) lacks it.
    pub fn unmet_need(&self, peer: Peer, need: &Need) -> Option<Unmet> {
        let backend = |reason: String| {
            Some(Unmet {
                reason,
                host: false,
            })
        };
        match need {
            Need::Nothing => None,
            Need::HostPath(path) if !Path::new(path).exists() => Some(Unmet {
                reason: format!("this host has no {path}"),
                host: true,
            }),
            Need::HostPath(_) => None,
            Need::NoHostPath(path, why) if Path::new(path).exists() => Some(Unmet {
                reason: format!("this host has {path}: {why}"),
                host: true,
            }),
            Need::NoHostPath(..) => None,
            // No renderer for our backend is this host's lack (virglrenderer and Mesa not
            // installed), unless VUG_REQUIRE_RENDERER says the host has them (CI installs
            // them): then it is our backend's failure.
            Need::Renderer if peer == Peer::Ours => match &self.renderer {
                Ok(()) => None,
                Err(why) => Some(Unmet {
                    reason: why.clone(),
                    host: std::env::var_os("VUG_REQUIRE_RENDERER").is_none(),
                }),
            },
            Need::All(needs) => needs.iter().find_map(|n| self.unmet_need(peer, n)),
            other => self.unmet_backend(peer, other).and_then(backend),
        }
    }

    fn unmet_backend(&self, peer: Peer, need: &Need) -> Option<String> {
        match need {
            Need::Nothing | Need::HostPath(_) | Need::NoHostPath(..) | Need::All(_) => None,
            Need::Features(mask) if self.features & mask != *mask => Some(format!(
                "backend did not negotiate features {:#x}",
                mask & !self.features
            )),
            Need::Features(_) => None,
            Need::HostVisibleRegion if self.region_size == 0 => {
                Some("backend has no host-visible region (SHMEM)".into())
            }
            Need::HostVisibleRegion => None,
            Need::OurCommandLine if peer != Peer::Ours => Some(format!(
                "needs this project's command-line flags, peer is {}",
                peer.name()
            )),
            Need::OurCommandLine => None,
            Need::Renderer => self.renderer.clone().err(),
        }
    }
}

/// Whether our backend starts with a virgl renderer here (`--capset virgl`).
fn probe_renderer(harness: &Harness) -> Result<(), String> {
    if harness.peer() != Peer::Ours {
        return Err(format!(
            "the renderer cases use this project's --capset; peer is {}",
            harness.peer().name()
        ));
    }
    let fe = harness
        .spawn_with(&["--capset", "virgl"])
        .map_err(|e| format!("our backend does not start with --capset virgl here: {e}"))?;
    if fe.acked_features() & crate::gpu::features::VIRGL == 0 {
        return Err("our backend with --capset virgl did not offer VIRGL".into());
    }
    Ok(())
}

/// A need a case has that is not met.
#[derive(Debug, Clone)]
pub struct Unmet {
    /// Why, for the report.
    pub reason: String,
    /// `true`: this host lacks something (a device node); `false`: the backend does not
    /// offer something.
    pub host: bool,
}

/// Runs the suite; `default_program` is our backend binary.
pub fn main(default_program: &Path) -> ! {
    // A child frontend process of the disconnect cases (this binary started again).
    if let Some(code) = cases::child_frontend_from_env() {
        std::process::exit(code);
    }
    let args = Arguments::from_args();
    let spec = BackendSpec::from_env(default_program);
    let harness = Harness::new(spec.clone());
    let caps = Capabilities::probe(&harness);
    // Every case of the upgrading groups again, with live upgrades in the middle (our
    // backend; not when VUG_UPGRADE_EVERY already upgrades in every case).
    let upgrading =
        spec.peer == Peer::Ours && crate::frontend::UpgradeSchedule::from_env().is_none();
    let again = cases::all()
        .into_iter()
        .filter(|case| upgrading && cases::runs_upgrading(case.name))
        .map(|case| (true, case));
    let trials = cases::all()
        .into_iter()
        .map(|case| (false, case))
        .chain(again)
        .map(|(upgrading, case): (bool, Case)| {
            let unmet = match &caps {
                Ok(c) => c.unmet_need(spec.peer, &case.need),
                Err(_) => None, // every case will fail with the real error
            };
            // Our backend must offer everything the cases need: one that stops offering
            // something (SHMEM, a feature bit) fails those cases instead of turning them
            // into "ignored" with exit code 0. Other peers' gaps, and what this host lacks,
            // are reported ignored (skipped), never passed.
            let outcome = match unmet {
                Some(u) if spec.peer == Peer::Ours && !u.host => Outcome::Fail(format!(
                    "our backend must meet this case's needs: {}",
                    u.reason
                )),
                Some(u) => {
                    eprintln!("conformance: {} skipped: {}", case.name, u.reason);
                    Outcome::Skip
                }
                None => Outcome::Run,
            };
            let harness = if upgrading {
                harness.upgrading(cases::UPGRADING)
            } else {
                harness.clone()
            };
            let run = case.run;
            let ignored = matches!(outcome, Outcome::Skip);
            let name = if upgrading {
                format!("upgrading::{}", case.name)
            } else {
                case.name.to_string()
            };
            let trial = Trial::test(name, move || match outcome {
                Outcome::Fail(why) => Err(Failed::from(why)),
                Outcome::Skip => Err(Failed::from("skipped")),
                Outcome::Run => {
                    run(&harness).map_err(Failed::from)?;
                    // Not vacuous: the backend was replaced at least once during the case.
                    if upgrading && harness.upgrades_done() == 0 {
                        return Err(Failed::from(
                            "no live upgrade happened during the case (it sent fewer control \
                             commands than the schedule needs, or started its backend \
                             without the harness)",
                        ));
                    }
                    Ok(())
                }
            })
            .with_kind(spec.peer.name());
            trial.with_ignored_flag(ignored)
        })
        .collect::<Vec<_>>();
    if let Err(e) = &caps {
        eprintln!(
            "conformance: cannot bring up {}: {e}",
            spec.program.display()
        );
    } else if let Ok(c) = &caps {
        eprintln!(
            "conformance: {} ({}) features {:#x} protocol {:?} region {:#x}",
            spec.program.display(),
            spec.peer.name(),
            c.features,
            c.protocol,
            c.region_size
        );
    }
    libtest_mimic::run(&args, trials).exit()
}

/// What the runner does with a case.
enum Outcome {
    /// Run it.
    Run,
    /// Report it ignored (a peer without what it needs, or a host without a device).
    Skip,
    /// Fail it without running (our backend does not offer what it needs).
    Fail(String),
}

/// Adds the backend's log (last 25 lines; all with `VUG_FULL_LOG=1`) to a failure message.
pub fn with_log(fe: &Frontend, msg: String) -> String {
    let log = fe.backend_log();
    let keep = if std::env::var_os("VUG_FULL_LOG").is_some() {
        usize::MAX
    } else {
        25
    };
    let tail: Vec<&str> = log.lines().rev().take(keep).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "{msg}\n--- {} ---\n--- backend log (tail) ---\n{}",
        fe.describe(),
        tail.join("\n")
    )
}
