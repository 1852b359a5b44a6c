//! The conformance cases. Each starts its own backend (a fresh process), drives it through
//! [`Frontend`] and checks what came back, what the display received, what was mapped into
//! the frontend, and what the backend process holds afterwards.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::frontend::{BackendSpec, Frontend, FrontendOptions, Peer, UpgradeSchedule};
use crate::gpu::{self, Cmd, Resp};

mod alloc;
mod blob;
mod bounds;
mod channel;
mod cli;
mod context;
mod disconnect;
mod hostile;
mod lifecycle;
mod limits;
mod queue;
mod render;
mod restart;
mod sandbox;
mod soak;
mod stale;
mod two_d;
mod upgrade;

pub use disconnect::{child_frontend_from_env, CHILD_SOCKET_ENV};

/// Outcome of a case: `Err` carries a message for the report.
pub type CaseResult = std::result::Result<(), String>;

/// What a case needs from the backend.
#[derive(Debug, Clone)]
pub enum Need {
    /// Any virtio-gpu backend.
    Nothing,
    /// These virtio-gpu feature bits negotiated.
    Features(u64),
    /// A host-visible shared memory region (SHMEM protocol feature, shmid 1).
    HostVisibleRegion,
    /// Flags of this project's binary (`--capture-dir`, `--policy-config`, ...).
    OurCommandLine,
    /// Our binary with a virgl renderer (`--capset virgl` starts here).
    Renderer,
    /// A path that must exist on this host (a device node such as `/dev/udmabuf`); without
    /// it the case is skipped whichever backend is under test.
    HostPath(&'static str),
    /// A path that must NOT exist on this host, and why (a case about a path the backend
    /// takes only without that device); with it the case is skipped.
    NoHostPath(&'static str, &'static str),
    /// All of these.
    All(Vec<Need>),
}

/// One case.
pub struct Case {
    /// Test name.
    pub name: &'static str,
    /// Requirements.
    pub need: Need,
    /// The body.
    pub run: fn(&Harness) -> CaseResult,
}

/// The test harness a case runs in: which backend is under test and how to start it. (In
/// the cases, `ctx` and `ctx_id` always mean virtio-gpu contexts, never this.)
#[derive(Debug, Clone)]
pub struct Harness {
    /// The backend under test.
    pub spec: BackendSpec,
    /// Every frontend this harness starts upgrades its backend on this schedule (our
    /// backend only; a case that sets its own schedule keeps it): the case's own assertions
    /// then hold across live upgrades in the middle of it.
    pub upgrading: Option<UpgradeSchedule>,
    /// Live upgrades done by the frontends this harness started.
    pub upgrades: Arc<AtomicU32>,
}

impl Harness {
    /// A harness for `spec`.
    pub fn new(spec: BackendSpec) -> Self {
        Self {
            spec,
            upgrading: None,
            upgrades: Arc::default(),
        }
    }

    /// A harness whose frontends upgrade our backend on `schedule`, with a counter of its
    /// own.
    pub fn upgrading(&self, schedule: UpgradeSchedule) -> Self {
        Self {
            spec: self.spec.clone(),
            upgrading: Some(schedule),
            upgrades: Arc::default(),
        }
    }

    /// How many live upgrades the frontends of this harness did.
    pub fn upgrades_done(&self) -> u32 {
        self.upgrades.load(Ordering::Relaxed)
    }

    /// Which peer is under test.
    pub fn peer(&self) -> Peer {
        self.spec.peer
    }

    /// Starts the backend with the suite's defaults (our binary: `--allocator memfd`, or
    /// the allocator named by `VUG_ALLOCATOR`, and `--capset cross-domain`).
    pub fn spawn(&self) -> crate::Result<Frontend> {
        self.spawn_with(&[])
    }

    /// The allocator our binary runs with in these cases (`memfd` unless `VUG_ALLOCATOR`
    /// names another); `None` for other peers.
    pub fn allocator(&self) -> Option<&str> {
        (self.spec.peer == Peer::Ours).then(|| self.spec.allocator().unwrap_or("memfd"))
    }

    /// Starts the backend with extra arguments (only meaningful for our binary).
    pub fn spawn_with(&self, extra: &[&str]) -> crate::Result<Frontend> {
        self.spawn_with_options(extra, FrontendOptions::default())
    }

    /// Starts the backend with extra arguments and frontend options.
    pub fn spawn_with_options(
        &self,
        extra: &[&str],
        mut options: FrontendOptions,
    ) -> crate::Result<Frontend> {
        options.upgrade_count = self.upgrades.clone();
        if self.spec.peer == Peer::Ours && options.upgrade_every.is_none() {
            if let Some(schedule) = self.upgrading {
                options.upgrade_every = Some(schedule);
                options.control_socket = true;
            }
        }
        let mut spec = self.spec.clone();
        if spec.peer == Peer::Ours {
            if !spec.args.iter().any(|a| a == "--allocator") && !extra.contains(&"--allocator") {
                spec.args
                    .extend(["--allocator".to_string(), "memfd".to_string()]);
            }
            // Without a renderer unless a case asks for one: what a case sees must not
            // depend on whether this host can render (the renderer cases pass --capset).
            if !spec.args.iter().any(|a| a == "--capset") && !extra.contains(&"--capset") {
                spec.args
                    .extend(["--capset".to_string(), "cross-domain".to_string()]);
            }
            spec.args.extend(extra.iter().map(|s| s.to_string()));
        }
        Frontend::spawn_with(spec, options)
    }
}

/// All cases, in report order.
pub fn all() -> Vec<Case> {
    let mut v = two_d::cases();
    v.extend(blob::cases());
    v.extend(context::cases());
    v.extend(render::cases());
    v.extend(channel::cases());
    v.extend(queue::cases());
    v.extend(cli::cases());
    v.extend(hostile::cases());
    v.extend(stale::cases());
    v.extend(sandbox::cases());
    v.extend(limits::cases());
    v.extend(alloc::cases());
    v.extend(bounds::cases());
    v.extend(soak::cases());
    v.extend(disconnect::cases());
    v.extend(lifecycle::cases());
    v.extend(upgrade::cases());
    v.extend(restart::cases());
    v
}

/// The case groups that run a second time as `upgrading::NAME`, with our backend replaced
/// by a new process (live upgrade) in the middle of each case ([`UPGRADING`]): the case's own
/// assertions must hold across the handovers. Not here: `xdomain::` (a context with a
/// Wayland channel refuses the handover by design, DESIGN-lifecycle.md 4.7; asserted by
/// `xdomain::upgrade_refused_while_a_channel_is_open`), `upgrade::` (upgrades already),
/// and the groups about one process's life (`cli::`, `sandbox::`, `soak::`, `disconnect::`,
/// `restart::`, `alloc::`: start-up, confinement, exits, per-process limits and counters).
pub const UPGRADING_GROUPS: [&str; 9] = [
    "2d::",
    "blob::",
    "ctx::",
    "queue::",
    "stale::",
    "lifecycle::",
    "hostile::",
    "bounds::",
    "limits::",
];

/// When the `upgrading::` cases upgrade: before the first chain put on the control queue and
/// every second one after it, at most four times per frontend (so set-up, use and checks of a
/// case are split by handovers; a one-command case is answered by a restored process).
pub const UPGRADING: UpgradeSchedule = UpgradeSchedule { every: 2, max: 4 };

/// Cases of [`UPGRADING_GROUPS`] that do not run upgrading, and why.
pub const NOT_UPGRADING: [(&str, &str); 0] = [];

/// Whether `case` runs a second time as `upgrading::NAME`.
pub fn runs_upgrading(case: &str) -> bool {
    UPGRADING_GROUPS.iter().any(|g| case.starts_with(g))
        && !NOT_UPGRADING.iter().any(|(name, _)| *name == case)
}

/// Display messages arrive on their own socket; wait this long for them (hang guard).
pub(crate) const DISPLAY_WAIT: Duration = Duration::from_secs(10);

/// Turns a library error into a case failure with the backend's log attached.
pub(crate) fn case_error(fe: &Frontend, what: &str, e: impl std::fmt::Display) -> String {
    crate::suite::with_log(fe, format!("{what}: {e}"))
}

/// Sends a control command; a transport error is a failure.
pub(crate) fn ctrl(fe: &mut Frontend, what: &str, cmd: Cmd) -> Result<Resp, String> {
    fe.ctrl(cmd).map_err(|e| case_error(fe, what, e))
}

/// Sends a control command and requires response type `ty` (`Err` with the backend's log
/// otherwise).
pub(crate) fn send_expecting(
    fe: &mut Frontend,
    what: &str,
    cmd: Cmd,
    ty: u32,
) -> Result<Resp, String> {
    let resp = ctrl(fe, what, cmd)?;
    if resp.ty != ty {
        return Err(crate::suite::with_log(
            fe,
            format!(
                "{what}: expected {} ({ty:#x}), got {} ({:#x})",
                gpu::ty::name(ty),
                resp.name(),
                resp.ty
            ),
        ));
    }
    Ok(resp)
}

/// Which side refused a request that may involve the host-visible region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusedBy {
    /// The backend, on its own checks: the frontend saw no mapping request for it.
    Backend,
    /// The test frontend: it refused the backend's `SHMEM_MAP`, and the backend passed the
    /// refusal on to the guest.
    Frontend,
}

/// Sends `cmd`, requires exactly the error `t`, and checks (from the frontend's record of
/// mapping requests) that `by` refused it: a backend that leaves a bound to the frontend,
/// or a frontend refusal that the backend hides behind its own check, both fail.
pub(crate) fn refused(
    fe: &mut Frontend,
    what: &str,
    cmd: Cmd,
    t: u32,
    by: RefusedBy,
) -> CaseResult {
    let seen = fe.shmem().map_or(0, |r| r.events().len());
    send_expecting(fe, what, cmd, t)?;
    let events = fe
        .shmem()
        .map(|r| r.events().split_off(seen))
        .unwrap_or_default();
    let asked = events.iter().any(|e| {
        matches!(
            e,
            crate::shmem::ShmemEvent::Mapped { .. } | crate::shmem::ShmemEvent::Refused { .. }
        )
    });
    let frontend_refused = events
        .iter()
        .any(|e| matches!(e, crate::shmem::ShmemEvent::Refused { .. }));
    match by {
        RefusedBy::Backend => ensure(fe, !asked, || {
            format!(
                "{what}: refused, but only after asking the frontend ({events:?}): the \
                 backend's own check did not refuse it"
            )
        }),
        RefusedBy::Frontend => ensure(fe, frontend_refused, || {
            format!(
                "{what}: expected the frontend to refuse a SHMEM_MAP, it saw {events:?} (the \
                 backend refused on its own)"
            )
        }),
    }
}

/// Fails with `msg` (and the backend log) unless `cond`.
pub(crate) fn ensure(fe: &Frontend, cond: bool, msg: impl FnOnce() -> String) -> CaseResult {
    if cond {
        Ok(())
    } else {
        Err(crate::suite::with_log(fe, msg()))
    }
}

/// The device must still answer after whatever the case did.
pub(crate) fn still_serving(fe: &mut Frontend) -> CaseResult {
    let errors = fe.memtable_errors();
    ensure(fe, errors.is_empty(), || {
        format!("memory-table updates failed: {errors:?}")
    })?;
    send_expecting(
        fe,
        "GET_DISPLAY_INFO after the case",
        gpu::get_display_info(),
        gpu::ty::OK_DISPLAY_INFO,
    )
    .map(|_| ())
}

/// A deterministic test pattern of `len` bytes, distinct per `seed`.
pub(crate) fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// BGRA pixels with opaque alpha (B8G8R8A8_UNORM), `w*h*4` bytes.
pub(crate) fn bgra_pattern(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut p = pattern((w * h * 4) as usize, seed);
    for px in p.chunks_mut(4) {
        px[3] = 0xff;
    }
    p
}
