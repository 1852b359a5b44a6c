//! [`RenderWorker`]: the renderer in a process of its own (the render worker, `super::worker`),
//! behind `Send` handles ([`RenderWorkerClient`]) that implement the device's
//! [`Renderer`] port over the [`wire`](super::wire) socket. The device does not change.
//!
//! Requests are sent in order; those that return something wait for the worker's reply,
//! those without an answer (destroy, attach, detach, unref) do not. One I/O thread
//! (`vug-render-io`) reads what the worker sends: replies go to the waiting request, fence
//! completions and a lost render server to a queue whose eventfd is the clients' poll fd.
//! Guest memory travels as a table of region fds (`SCM_RIGHTS`), sent again whenever the
//! memory passed with a backing differs from the last one sent.
//!
//! Loss: an end of stream, a malformed message or a request left unanswered for
//! [`ANSWER_TIMEOUT`] makes the worker lost: it is killed (when it still runs) and reaped,
//! one error line names its pid and how it ended (a signal such as `SIGSEGV`, or an exit
//! status), every later request fails with [`RendererError::Gone`] and each client's
//! [`Renderer::poll`] reports [`RendererEvent::RendererLost`] once. The device then ends
//! its renderer contexts; 2D and cross-domain keep working in this process.
//!
//! The I/O thread starts with the worker, before the backend confines itself: the seccomp
//! filter covers it (it is installed on every thread), Landlock (which binds the calling
//! thread and its later children) does not. That is what lets it kill the worker: Landlock's
//! signal scope forbids signals to processes outside the caller's domain, and the worker,
//! started earlier, is outside the main thread's. The thread runs only this module's code.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use rustix::process::{Pid, Signal, WaitOptions};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::wire::{
    self, recv_frame, send_request, Event, RegionDesc, Reply, Request, StartConfig, WireError,
    WorkerMessage,
};
use crate::device::ports::{
    BlobRequest, CapsetInfo, ExportedBlob, GuestMemory, Renderer, RendererError, RendererEvent,
    Resource3d, ResourceInfo, ScanoutExport, Transfer3d,
};

/// How long a request may wait for its answer before the worker counts as hung.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the worker may take to start (Mesa's initialisation, the render server).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Most events queued for the devices: far above what the devices' fence bounds let a
/// worker owe; a worker that sends more is not trusted further.
const MAX_QUEUED_EVENTS: usize = 1 << 16;

/// The render worker process and its I/O thread. Dropping it closes the connection: the
/// worker exits, and is reaped.
pub struct RenderWorker {
    client: RenderWorkerClient,
    thread: Option<std::thread::JoinHandle<()>>,
    render_server: Option<u32>,
    venus_withheld: Option<String>,
}

/// A `Send` handle to the render worker; every connection's device holds one.
#[derive(Clone)]
pub struct RenderWorkerClient {
    shared: Arc<Shared>,
    capsets: Vec<CapsetInfo>,
    lost_reported: bool,
}

/// What the clients and the I/O thread share.
struct Shared {
    socket: OwnedFd,
    pid: u32,
    /// Held from sending a request to receiving its answer: one request at a time.
    calls: Mutex<Calls>,
    replies: Mutex<VecDeque<(Reply, Vec<OwnedFd>)>>,
    replied: Condvar,
    events: Mutex<VecDeque<Event>>,
    /// Readable while events wait or once the worker is lost.
    events_fd: OwnedFd,
    /// Why the worker is lost (set once).
    lost: Mutex<Option<String>>,
    /// Written to make the I/O thread kill the worker.
    kill_fd: OwnedFd,
    /// How long a request waits for its answer ([`ANSWER_TIMEOUT`] unless a test changes
    /// it), in milliseconds.
    answer_timeout_ms: std::sync::atomic::AtomicU64,
}

/// The sending side's state.
#[derive(Default)]
struct Calls {
    /// The guest memory whose table the worker has (kept so that its files stay the same).
    memory: Option<GuestMemory>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A signal's name, for log lines.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGSYS => "SIGSYS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal} ({name})")
}

impl Shared {
    fn lost(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    fn wake_pollers(&self) {
        let _ = rustix::io::write(&self.events_fd, &1u64.to_ne_bytes());
    }

    /// Marks the worker lost (the first reason stays) and logs it once.
    fn lose(&self, why: String) {
        {
            let mut lost = lock(&self.lost);
            if lost.is_some() {
                return;
            }
            log::error!(
                "renderer: {why}: every renderer context is lost and 3D commands fail until \
                 the backend restarts; 2D and cross-domain keep working"
            );
            *lost = Some(why);
        }
        self.replied.notify_all();
        self.wake_pollers();
    }

    /// Has the I/O thread kill the worker.
    fn kill(&self) {
        let _ = rustix::io::write(&self.kill_fd, &1u64.to_ne_bytes());
    }

    fn send(&self, request: &Request, fds: &[BorrowedFd<'_>]) -> Result<(), RendererError> {
        if self.lost().is_some() {
            return Err(RendererError::Gone);
        }
        send_request(self.socket.as_fd(), request, fds).map_err(|e| {
            self.lose(format!(
                "the render worker (pid {}) cannot be sent {}: {e}",
                self.pid,
                request.what()
            ));
            self.kill();
            RendererError::Gone
        })
    }

    /// Waits for the answer to `what`.
    fn wait_reply(&self, what: &str) -> Result<(Reply, Vec<OwnedFd>), RendererError> {
        let timeout = Duration::from_millis(
            self.answer_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let deadline = Instant::now() + timeout;
        let mut replies = lock(&self.replies);
        loop {
            if let Some(reply) = replies.pop_front() {
                return Ok(reply);
            }
            if self.lost().is_some() {
                return Err(RendererError::Gone);
            }
            let now = Instant::now();
            if now >= deadline {
                drop(replies);
                self.lose(format!(
                    "the render worker (pid {}) did not answer {what} within {:.1} s; it is killed",
                    self.pid,
                    timeout.as_secs_f64()
                ));
                self.kill();
                return Err(RendererError::Gone);
            }
            replies = self
                .replied
                .wait_timeout(replies, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends `request` (after the guest memory table when `memory` differs from the last
    /// one sent) and, when it is answered, waits for the answer.
    fn call(
        &self,
        request: Request,
        memory: Option<&GuestMemory>,
    ) -> Result<(Reply, Vec<OwnedFd>), RendererError> {
        let mut calls = lock(&self.calls);
        if let Some(memory) = memory {
            if calls
                .memory
                .as_ref()
                .is_none_or(|last| !same_table(last, memory))
            {
                let (regions, fds) = table(memory)?;
                self.send(&Request::MemoryTable { regions }, &fds)?;
                calls.memory = Some(memory.clone());
            }
        }
        self.send(&request, &[])?;
        if !request.answered() {
            return Ok((Reply::Ok, Vec::new()));
        }
        self.wait_reply(request.what())
    }

    /// A reply of the wrong kind: the worker is not trusted further.
    fn unexpected(&self, what: &str, reply: &Reply) -> RendererError {
        self.lose(format!(
            "the render worker (pid {}) answered {what} with {reply:?}, which does not answer \
             it; it is killed",
            self.pid
        ));
        self.kill();
        RendererError::Gone
    }
}

/// The regions of `memory` as the worker maps them, and their fds.
fn table(memory: &GuestMemory) -> Result<(Vec<RegionDesc>, Vec<BorrowedFd<'_>>), RendererError> {
    let mut regions = Vec::new();
    let mut fds = Vec::new();
    for region in memory.iter() {
        let file = region.file_offset().ok_or_else(|| {
            RendererError::Failed(format!(
                "guest memory at {:#x} is not backed by a file, so the render worker cannot \
                 map it (the frontend must share guest memory: memory-backend-memfd)",
                region.start_addr().0
            ))
        })?;
        regions.push(RegionDesc {
            guest_addr: region.start_addr().0,
            len: region.len(),
            file_offset: file.start(),
        });
        fds.push(file.file().as_fd());
    }
    if regions.len() > wire::MAX_FDS {
        return Err(RendererError::Failed(format!(
            "guest memory has {} regions; the render worker takes at most {}",
            regions.len(),
            wire::MAX_FDS
        )));
    }
    Ok((regions, fds))
}

/// Whether two guest memories are the same regions of the same files.
fn same_table(a: &GuestMemory, b: &GuestMemory) -> bool {
    let key = |m: &GuestMemory| -> Vec<(u64, u64, u64, usize)> {
        m.iter()
            .map(|r| {
                let (offset, file) = r
                    .file_offset()
                    .map_or((0, 0), |f| (f.start(), Arc::as_ptr(f.arc()) as usize));
                (r.start_addr().0, r.len(), offset, file)
            })
            .collect()
    };
    key(a) == key(b)
}

impl std::fmt::Debug for RenderWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.client.fmt(f)
    }
}

impl std::fmt::Debug for RenderWorkerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderWorkerClient")
            .field("pid", &self.shared.pid)
            .field("capsets", &self.capsets)
            .finish()
    }
}

/// Waits up to `limit` for the worker to end; how it ended.
fn reap(pid: u32, limit: Duration) -> Option<String> {
    let pid = Pid::from_raw(pid as i32)?;
    let deadline = Instant::now() + limit;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                return Some(if let Some(signal) = status.terminating_signal() {
                    format!("was killed by {}", signal_name(signal))
                } else {
                    format!("exited with status {}", status.exit_status().unwrap_or(-1))
                })
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => return None,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Some(format!("cannot be waited for ({e})")),
        }
    }
}

/// The I/O thread: reads the worker's messages until the end, kills on order, reaps.
fn io_thread(shared: Arc<Shared>, reader: OwnedFd) {
    let pid = shared.pid;
    let mut killed = false;
    let why = loop {
        let (readable, kill) = {
            let mut fds = [
                PollFd::new(&reader, PollFlags::IN),
                PollFd::new(&shared.kill_fd, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => break format!("cannot wait for it ({e})"),
            }
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
        };
        if kill && !killed {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&shared.kill_fd, &mut buf);
            killed = true;
            if let Some(p) = Pid::from_raw(pid as i32) {
                if let Err(e) = rustix::process::kill_process(p, Signal::KILL) {
                    log::warn!("renderer: cannot kill the render worker (pid {pid}): {e}");
                }
            }
            let _ = rustix::net::shutdown(&reader, rustix::net::Shutdown::Both);
        }
        if !readable {
            continue;
        }
        let frame = match recv_frame(reader.as_fd()) {
            Ok(f) => f,
            Err(WireError::Closed) => break "closed its connection".to_string(),
            Err(e) => {
                let _ = Pid::from_raw(pid as i32)
                    .map(|p| rustix::process::kill_process(p, Signal::KILL));
                break format!("sent a malformed message ({e}); it is killed");
            }
        };
        match WorkerMessage::decode(&frame.payload, frame.fds.len()) {
            Ok(WorkerMessage::Reply(reply)) => {
                let mut replies = lock(&shared.replies);
                if !replies.is_empty() {
                    drop(replies);
                    let _ = Pid::from_raw(pid as i32)
                        .map(|p| rustix::process::kill_process(p, Signal::KILL));
                    break "answered a request that was not made; it is killed".to_string();
                }
                replies.push_back((reply, frame.fds));
                drop(replies);
                shared.replied.notify_all();
            }
            Ok(WorkerMessage::Event(Event::RendererLost(why))) => {
                break format!("lost its renderer ({why})");
            }
            Ok(WorkerMessage::Event(event)) => {
                let mut events = lock(&shared.events);
                if events.len() >= MAX_QUEUED_EVENTS {
                    drop(events);
                    let _ = Pid::from_raw(pid as i32)
                        .map(|p| rustix::process::kill_process(p, Signal::KILL));
                    break format!(
                        "sent more than {MAX_QUEUED_EVENTS} events nobody asked for; it is killed"
                    );
                }
                events.push_back(event);
                drop(events);
                shared.wake_pollers();
            }
            Err(e) => {
                let _ = Pid::from_raw(pid as i32)
                    .map(|p| rustix::process::kill_process(p, Signal::KILL));
                break format!("sent a malformed message ({e}); it is killed");
            }
        }
    };
    let ended = reap(pid, Duration::from_secs(2)).or_else(|| {
        // Still running: it is not used again.
        let _ = Pid::from_raw(pid as i32).map(|p| rustix::process::kill_process(p, Signal::KILL));
        reap(pid, Duration::from_secs(5))
    });
    let how = ended.unwrap_or_else(|| "did not end".into());
    if shared.lost().is_some() {
        log::info!("renderer: the render worker (pid {pid}) {how}");
    }
    shared.lose(format!("the render worker (pid {pid}) {why} and {how}"));
}

impl RenderWorker {
    /// Starts `program --render-worker` (our own binary), sends it `config` and waits for
    /// its renderer to start. `verbose`: the backend's `-v` count, passed on.
    pub fn spawn(program: &Path, config: StartConfig, verbose: u8) -> Result<Self, RendererError> {
        let start = |e: String| RendererError::Start(format!("the render worker: {e}"));
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| start(format!("socketpair: {e}")))?;
        // The child's end without close-on-exec (nothing else is started meanwhile: this
        // runs at start-up, before the threads that serve guests).
        rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())
            .map_err(|e| start(format!("fcntl: {e}")))?;
        let fd = {
            use std::os::fd::AsRawFd;
            theirs.as_raw_fd()
        };
        let mut command = std::process::Command::new(program);
        command
            .arg("--render-worker")
            .arg("--fd")
            .arg(fd.to_string())
            .arg("--parent")
            .arg(std::process::id().to_string())
            .stdin(std::process::Stdio::null());
        for _ in 0..verbose {
            command.arg("-v");
        }
        let child = command
            .spawn()
            .map_err(|e| start(format!("cannot run {}: {e}", program.display())))?;
        drop(theirs);
        let pid = child.id();
        // Reaped by the I/O thread (std's handle does not wait when dropped).
        drop(child);
        let fail = |e: RendererError| {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
            let _ = reap(pid, Duration::from_secs(5));
            e
        };
        send_request(ours.as_fd(), &Request::Start(config), &[])
            .map_err(|e| fail(start(format!("cannot send the start request: {e}"))))?;
        let mut pfd = [PollFd::new(&ours, PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: START_TIMEOUT.as_secs() as i64,
            tv_nsec: 0,
        };
        match poll(&mut pfd, Some(&timeout)) {
            Ok(0) => {
                return Err(fail(start(format!(
                    "pid {pid} did not start within {} s",
                    START_TIMEOUT.as_secs()
                ))))
            }
            Ok(_) => {}
            Err(e) => return Err(fail(start(format!("poll: {e}")))),
        }
        let frame = recv_frame(ours.as_fd()).map_err(|e| {
            let ended = reap(pid, Duration::from_secs(2));
            fail(start(format!(
                "pid {pid} ended before its renderer started ({e}; it {})",
                ended.unwrap_or_else(|| "still runs".into())
            )))
        })?;
        let (capsets, render_server, venus_withheld) =
            match WorkerMessage::decode(&frame.payload, frame.fds.len()) {
                Ok(WorkerMessage::Reply(Reply::Started {
                    capsets,
                    render_server,
                    venus_withheld,
                })) => (capsets, render_server, venus_withheld),
                Ok(WorkerMessage::Reply(Reply::Err(e))) => {
                    let _ = reap(pid, Duration::from_secs(5));
                    return Err(RendererError::from(e));
                }
                Ok(other) => {
                    return Err(fail(start(format!("unexpected first message {other:?}"))))
                }
                Err(e) => return Err(fail(start(format!("malformed first message: {e}")))),
            };
        let reader = ours
            .try_clone()
            .map_err(|e| fail(start(format!("dup: {e}"))))?;
        let mk_eventfd = || {
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .map_err(|e| fail(start(format!("eventfd: {e}"))))
        };
        let shared = Arc::new(Shared {
            socket: ours,
            pid,
            calls: Mutex::new(Calls::default()),
            replies: Mutex::new(VecDeque::new()),
            replied: Condvar::new(),
            events: Mutex::new(VecDeque::new()),
            events_fd: mk_eventfd()?,
            lost: Mutex::new(None),
            kill_fd: mk_eventfd()?,
            answer_timeout_ms: std::sync::atomic::AtomicU64::new(ANSWER_TIMEOUT.as_millis() as u64),
        });
        let on_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vug-render-io".into())
            .spawn(move || io_thread(on_thread, reader))
            .map_err(|e| fail(start(format!("cannot start its I/O thread: {e}"))))?;
        log::info!("renderer: render worker pid {pid} started");
        Ok(RenderWorker {
            client: RenderWorkerClient {
                shared,
                capsets,
                lost_reported: false,
            },
            thread: Some(thread),
            render_server,
            venus_withheld,
        })
    }

    /// A handle for a device.
    pub fn client(&self) -> RenderWorkerClient {
        self.client.clone()
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        self.client.shared.pid
    }

    /// The capsets the worker serves.
    pub fn capsets(&self) -> Vec<CapsetInfo> {
        self.client.capsets.clone()
    }

    /// The render server the worker started (venus).
    pub fn render_server(&self) -> Option<u32> {
        self.render_server
    }

    /// Why venus is not served though asked for.
    pub fn venus_withheld(&self) -> Option<&str> {
        self.venus_withheld.as_deref()
    }

    /// Changes how long a request waits for the worker's answer before the worker counts as
    /// hung (default [`ANSWER_TIMEOUT`]); for tests.
    pub fn set_answer_timeout(&self, timeout: Duration) {
        self.client.shared.answer_timeout_ms.store(
            timeout.as_millis().try_into().unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Why the worker is lost, once it is.
    pub fn lost(&self) -> Option<String> {
        self.client.shared.lost()
    }
}

impl Drop for RenderWorker {
    fn drop(&mut self) {
        // The worker sees the end of the stream and exits; the I/O thread reaps it.
        {
            let mut lost = lock(&self.client.shared.lost);
            if lost.is_none() {
                *lost = Some("the render worker was stopped".into());
            }
        }
        let _ = rustix::net::shutdown(&self.client.shared.socket, rustix::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl RenderWorkerClient {
    fn done(
        &self,
        what: &str,
        r: Result<(Reply, Vec<OwnedFd>), RendererError>,
    ) -> Result<(), RendererError> {
        match r? {
            (Reply::Ok, _) => Ok(()),
            (Reply::Err(e), _) => Err(e.into()),
            (other, _) => Err(self.shared.unexpected(what, &other)),
        }
    }

    fn data(
        &self,
        what: &str,
        r: Result<(Reply, Vec<OwnedFd>), RendererError>,
    ) -> Result<Vec<u8>, RendererError> {
        match r? {
            (Reply::Data(d), _) => Ok(d),
            (Reply::Err(e), _) => Err(e.into()),
            (other, _) => Err(self.shared.unexpected(what, &other)),
        }
    }

    fn post(&self, request: Request) {
        let what = request.what();
        if self.shared.call(request, None).is_err() {
            crate::guest_log::guest_warn!("renderer: {what} dropped: the render worker is gone");
        }
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }
}

impl Renderer for RenderWorkerClient {
    fn name(&self) -> &'static str {
        "virglrenderer (render worker)"
    }

    fn capsets(&self) -> Vec<CapsetInfo> {
        self.capsets.clone()
    }

    fn capset(&mut self, id: u32, version: u32) -> Result<Vec<u8>, RendererError> {
        let r = self.shared.call(Request::Capset { id, version }, None);
        self.data("GET_CAPSET", r)
    }

    fn context_create(
        &mut self,
        ctx_id: u32,
        capset: u32,
        name: &[u8],
    ) -> Result<(), RendererError> {
        let r = self.shared.call(
            Request::ContextCreate {
                ctx_id,
                capset,
                name: name.to_vec(),
            },
            None,
        );
        self.done("CTX_CREATE", r)
    }

    fn context_destroy(&mut self, ctx_id: u32) {
        self.post(Request::ContextDestroy { ctx_id });
    }

    fn context_attach(&mut self, ctx_id: u32, res_id: u32) {
        self.post(Request::ContextAttach { ctx_id, res_id });
    }

    fn context_detach(&mut self, ctx_id: u32, res_id: u32) {
        self.post(Request::ContextDetach { ctx_id, res_id });
    }

    fn resource_create_3d(&mut self, res_id: u32, args: &Resource3d) -> Result<(), RendererError> {
        let r = self.shared.call(
            Request::ResourceCreate3d {
                res_id,
                args: *args,
            },
            None,
        );
        self.done("RESOURCE_CREATE_3D", r)
    }

    fn attach_backing(
        &mut self,
        res_id: u32,
        memory: &GuestMemory,
        ranges: &[(u64, u64)],
    ) -> Result<(), RendererError> {
        let r = self.shared.call(
            Request::AttachBacking {
                res_id,
                ranges: ranges.to_vec(),
            },
            Some(memory),
        );
        self.done("RESOURCE_ATTACH_BACKING", r)
    }

    fn detach_backing(&mut self, res_id: u32) {
        self.post(Request::DetachBacking { res_id });
    }

    fn resource_create_blob(
        &mut self,
        res_id: u32,
        request: &BlobRequest,
        backing: Option<(&GuestMemory, &[(u64, u64)])>,
    ) -> Result<(), RendererError> {
        let r = self.shared.call(
            Request::ResourceCreateBlob {
                res_id,
                request: *request,
                backing: backing.map(|(_, ranges)| ranges.to_vec()),
            },
            backing.map(|(memory, _)| memory),
        );
        self.done("RESOURCE_CREATE_BLOB", r)
    }

    fn resource_unref(&mut self, res_id: u32) {
        self.post(Request::ResourceUnref { res_id });
    }

    fn transfer_to_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        transfer: &Transfer3d,
    ) -> Result<(), RendererError> {
        let r = self.shared.call(
            Request::TransferToHost {
                ctx_id,
                res_id,
                transfer: *transfer,
            },
            None,
        );
        self.done("TRANSFER_TO_HOST_3D", r)
    }

    fn transfer_from_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        transfer: &Transfer3d,
    ) -> Result<(), RendererError> {
        let r = self.shared.call(
            Request::TransferFromHost {
                ctx_id,
                res_id,
                transfer: *transfer,
            },
            None,
        );
        self.done("TRANSFER_FROM_HOST_3D", r)
    }

    fn submit(&mut self, ctx_id: u32, commands: &[u8]) -> Result<(), RendererError> {
        let r = self.shared.call(
            Request::Submit {
                ctx_id,
                commands: commands.to_vec(),
            },
            None,
        );
        self.done("SUBMIT_3D", r)
    }

    fn create_fence(
        &mut self,
        ctx_id: u32,
        ring: Option<u32>,
        fence_id: u64,
    ) -> Result<(), RendererError> {
        let r = self.shared.call(
            Request::CreateFence {
                ctx_id,
                ring,
                fence_id,
            },
            None,
        );
        self.done("fence", r)
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.shared.events_fd.as_fd()
    }

    fn poll(&mut self) -> Vec<RendererEvent> {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.shared.events_fd, &mut buf);
        let mut out: Vec<RendererEvent> = lock(&self.shared.events)
            .drain(..)
            .map(|e| match e {
                Event::Fence(f) => RendererEvent::Fence(f),
                Event::RenderServerLost(s) => RendererEvent::RenderServerLost(s),
                Event::RendererLost(s) => RendererEvent::RendererLost(s),
            })
            .collect();
        if let Some(why) = self.shared.lost() {
            // Readable from now on, for every client.
            self.shared.wake_pollers();
            if !self.lost_reported {
                self.lost_reported = true;
                out.push(RendererEvent::RendererLost(why));
            }
        }
        out
    }

    fn export_blob(&mut self, res_id: u32) -> Result<ExportedBlob, RendererError> {
        match self.shared.call(Request::ExportBlob { res_id }, None)? {
            (
                Reply::Blob {
                    kind,
                    fd_offset,
                    map_info,
                },
                mut fds,
            ) if fds.len() == 1 => Ok(ExportedBlob {
                fd: fds.remove(0),
                kind,
                fd_offset,
                renderer_map_info: map_info,
            }),
            (Reply::Err(e), _) => Err(e.into()),
            (other, _) => Err(self.shared.unexpected("RESOURCE_MAP_BLOB", &other)),
        }
    }

    fn resource_info(&mut self, res_id: u32) -> Result<ResourceInfo, RendererError> {
        match self.shared.call(Request::ResourceInfo { res_id }, None)? {
            (Reply::Info(i), _) => Ok(i),
            (Reply::Err(e), _) => Err(e.into()),
            (other, _) => Err(self.shared.unexpected("resource info", &other)),
        }
    }

    fn read_pixels(
        &mut self,
        res_id: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, RendererError> {
        let r = self.shared.call(
            Request::ReadPixels {
                res_id,
                width,
                height,
            },
            None,
        );
        let data = self.data("read-back", r)?;
        let expected = u64::from(width) * u64::from(height) * 4;
        if data.len() as u64 != expected {
            return Err(self
                .shared
                .unexpected("read-back", &Reply::Data(Vec::new())));
        }
        Ok(data)
    }

    fn export_scanout(&mut self, res_id: u32) -> Result<ScanoutExport, RendererError> {
        match self.shared.call(Request::ExportScanout { res_id }, None)? {
            (
                Reply::Scanout {
                    stride,
                    offset,
                    drm_fourcc,
                    width,
                    height,
                },
                mut fds,
            ) if fds.len() == 1 => Ok(ScanoutExport {
                fd: fds.remove(0),
                stride,
                offset,
                drm_fourcc,
                width,
                height,
            }),
            (Reply::Err(e), _) => Err(e.into()),
            (other, _) => Err(self.shared.unexpected("scanout export", &other)),
        }
    }

    fn reset(&mut self) {
        let r = self.shared.call(Request::Reset, None);
        let _ = self.done("reset", r);
    }
}
