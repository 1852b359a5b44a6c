//! [`RendererThread`]: a [`Renderer`] that lives on a thread of its own, behind `Send`
//! handles ([`RendererClient`]) that implement the same port.
//!
//! virglrenderer must be called from the thread that initialised it, and it is process-wide,
//! while the device core moves between the vhost-user threads and is rebuilt for every
//! frontend connection. So the renderer is started once, at start-up (before the sandbox
//! closes), on its own thread, and each connection's device talks to it through a client.
//! Requests run in the order they are sent; those without an answer (destroy, detach, unref)
//! do not wait. The poll fd is an epoll set holding a duplicate of the renderer's own, so
//! fence completions wake the device without a round trip.
//!
//! Containment: a request that panics on the renderer thread stops the renderer there (its
//! state may be half-changed, so it is not used again; it is dropped, which ends its contexts
//! and its render server). The thread then ends, every client's later request fails with
//! [`RendererError::Gone`], and each client's [`Renderer::poll`] reports
//! [`RendererEvent::RendererLost`] once, woken through the poll fd, so each device releases
//! the answers that waited for the renderer and keeps serving 2D and cross-domain. A fault
//! inside the C library (SIGSEGV, abort) is not a panic and cannot be caught in this process:
//! only a renderer in a process of its own would contain it (venus contexts already run in
//! the render server).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use rustix::event::{epoll, eventfd, EventfdFlags};

use crate::device::ports::{
    BlobRequest, CapsetInfo, ExportedBlob, GuestMemory, Renderer, RendererError, RendererEvent,
    Resource3d, ResourceInfo, ScanoutExport, Transfer3d,
};

/// A request run on the renderer thread.
type Request = Box<dyn FnOnce(&mut dyn Renderer) + Send>;

/// Work for the renderer thread: a request, or the order to stop.
enum Job {
    Run(Request),
    Stop,
}

/// A renderer running on its own thread. Dropping it stops the thread (clients still alive
/// then get [`RendererError::Gone`]).
pub struct RendererThread {
    client: RendererClient,
    thread: Option<JoinHandle<()>>,
}

/// A `Send` handle to the renderer thread; every connection's device holds one.
#[derive(Clone)]
pub struct RendererClient {
    jobs: mpsc::Sender<Job>,
    name: &'static str,
    capsets: Vec<CapsetInfo>,
    /// An epoll set: the renderer's poll fd and `stopped.fd`.
    poll_fd: Arc<OwnedFd>,
    stopped: Arc<Stopped>,
    /// This client reported [`RendererEvent::RendererLost`] already.
    lost_reported: bool,
}

/// Why the renderer thread stopped, and the eventfd that says it did (readable from then on).
#[derive(Debug)]
struct Stopped {
    why: Mutex<Option<String>>,
    fd: OwnedFd,
}

impl Stopped {
    fn set(&self, why: String) {
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    fn why(&self) -> Option<String> {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The client's poll fd: an epoll set holding the renderer's poll fd and the stop eventfd.
fn client_poll_set(renderer: BorrowedFd<'_>, stopped: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let set = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for (fd, token) in [(renderer, 1), (stopped, 2)] {
        epoll::add(
            &set,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )?;
    }
    Ok(set)
}

impl std::fmt::Debug for RendererThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.client.fmt(f)
    }
}

impl std::fmt::Debug for RendererClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RendererClient")
            .field("name", &self.name)
            .field("capsets", &self.capsets)
            .finish()
    }
}

impl RendererThread {
    /// Starts a thread named `vug-renderer` and builds the renderer there with `make`.
    pub fn spawn<F>(make: F) -> Result<Self, RendererError>
    where
        F: FnOnce() -> Result<Box<dyn Renderer>, RendererError> + Send + 'static,
    {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let stopped = Arc::new(Stopped {
            why: Mutex::new(None),
            fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .map_err(|e| RendererError::Start(format!("eventfd: {e}")))?,
        });
        let on_thread = stopped.clone();
        let thread = std::thread::Builder::new()
            .name("vug-renderer".into())
            .spawn(move || {
                let mut renderer = match make() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let poll_fd = client_poll_set(renderer.poll_fd(), on_thread.fd.as_fd());
                let ready = poll_fd
                    .map(|fd| (renderer.name(), renderer.capsets(), fd))
                    .map_err(|e| RendererError::Start(format!("the renderer's poll set: {e}")));
                let ok = ready.is_ok();
                if ready_tx.send(ready).is_err() || !ok {
                    return;
                }
                while let Ok(Job::Run(job)) = jobs_rx.recv() {
                    let Err(payload) =
                        std::panic::catch_unwind(AssertUnwindSafe(|| job(renderer.as_mut())))
                    else {
                        continue;
                    };
                    let why = format!(
                        "a renderer request panicked ({}); the renderer is stopped",
                        panic_text(payload.as_ref())
                    );
                    log::error!(
                        "renderer: {why}: every renderer context is lost and 3D commands fail \
                         until the backend restarts; 2D and cross-domain keep working"
                    );
                    // Its state may be half-changed: it is not used again. Dropping it ends
                    // its contexts and its render server (a panic there changes nothing).
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(renderer)));
                    on_thread.set(why);
                    return;
                }
            })
            .map_err(|e| RendererError::Start(format!("cannot start the renderer thread: {e}")))?;
        let (name, capsets, poll_fd) = match ready_rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(RendererError::Gone);
            }
        };
        Ok(RendererThread {
            client: RendererClient {
                jobs: jobs_tx,
                name,
                capsets,
                poll_fd: Arc::new(poll_fd),
                stopped,
                lost_reported: false,
            },
            thread: Some(thread),
        })
    }

    /// A handle for a device.
    pub fn client(&self) -> RendererClient {
        self.client.clone()
    }

    /// Runs `f` on the renderer thread (as itself, not as a renderer request) and waits for
    /// it: for what must happen on that thread, such as confining it.
    pub fn run_on_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RendererError> {
        self.client.call(move |_| f())
    }
}

impl RendererClient {
    /// Runs `f` on the renderer thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Renderer) -> T + Send + 'static,
    ) -> Result<T, RendererError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(move |r| {
            let _ = tx.send(f(r));
        })?;
        rx.recv().map_err(|_| RendererError::Gone)
    }

    /// Whether the renderer thread stopped after a failure, and why.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.why()
    }

    /// Queues `f` on the renderer thread without waiting.
    fn send(
        &self,
        f: impl FnOnce(&mut dyn Renderer) + Send + 'static,
    ) -> Result<(), RendererError> {
        self.jobs
            .send(Job::Run(Box::new(f)))
            .map_err(|_| RendererError::Gone)
    }

    fn post(&self, what: &str, f: impl FnOnce(&mut dyn Renderer) + Send + 'static) {
        if self.send(f).is_err() {
            crate::guest_log::guest_warn!("renderer: {what} dropped: the renderer thread is gone");
        }
    }
}

impl Drop for RendererThread {
    fn drop(&mut self) {
        // The thread ends after the requests already queued and drops (cleans up) the
        // renderer there.
        let _ = self.client.jobs.send(Job::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread serves the port through its own client.
impl Renderer for RendererThread {
    fn name(&self) -> &'static str {
        self.client.name()
    }
    fn capsets(&self) -> Vec<CapsetInfo> {
        self.client.capsets()
    }
    fn capset(&mut self, id: u32, version: u32) -> Result<Vec<u8>, RendererError> {
        self.client.capset(id, version)
    }
    fn context_create(
        &mut self,
        ctx_id: u32,
        capset: u32,
        name: &[u8],
    ) -> Result<(), RendererError> {
        self.client.context_create(ctx_id, capset, name)
    }
    fn context_destroy(&mut self, ctx_id: u32) {
        self.client.context_destroy(ctx_id)
    }
    fn context_attach(&mut self, ctx_id: u32, res_id: u32) {
        self.client.context_attach(ctx_id, res_id)
    }
    fn context_detach(&mut self, ctx_id: u32, res_id: u32) {
        self.client.context_detach(ctx_id, res_id)
    }
    fn resource_create_3d(&mut self, res_id: u32, args: &Resource3d) -> Result<(), RendererError> {
        self.client.resource_create_3d(res_id, args)
    }
    fn attach_backing(
        &mut self,
        res_id: u32,
        memory: &GuestMemory,
        ranges: &[(u64, u64)],
    ) -> Result<(), RendererError> {
        self.client.attach_backing(res_id, memory, ranges)
    }
    fn detach_backing(&mut self, res_id: u32) {
        self.client.detach_backing(res_id)
    }
    fn resource_create_blob(
        &mut self,
        res_id: u32,
        request: &BlobRequest,
        backing: Option<(&GuestMemory, &[(u64, u64)])>,
    ) -> Result<(), RendererError> {
        self.client.resource_create_blob(res_id, request, backing)
    }
    fn resource_unref(&mut self, res_id: u32) {
        self.client.resource_unref(res_id)
    }
    fn transfer_to_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        t: &Transfer3d,
    ) -> Result<(), RendererError> {
        self.client.transfer_to_host(ctx_id, res_id, t)
    }
    fn transfer_from_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        t: &Transfer3d,
    ) -> Result<(), RendererError> {
        self.client.transfer_from_host(ctx_id, res_id, t)
    }
    fn submit(&mut self, ctx_id: u32, commands: &[u8]) -> Result<(), RendererError> {
        self.client.submit(ctx_id, commands)
    }
    fn create_fence(
        &mut self,
        ctx_id: u32,
        ring: Option<u32>,
        fence_id: u64,
    ) -> Result<(), RendererError> {
        self.client.create_fence(ctx_id, ring, fence_id)
    }
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.client.poll_fd()
    }
    fn poll(&mut self) -> Vec<RendererEvent> {
        self.client.poll()
    }
    fn export_blob(&mut self, res_id: u32) -> Result<ExportedBlob, RendererError> {
        self.client.export_blob(res_id)
    }
    fn resource_info(&mut self, res_id: u32) -> Result<ResourceInfo, RendererError> {
        self.client.resource_info(res_id)
    }
    fn read_pixels(
        &mut self,
        res_id: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, RendererError> {
        self.client.read_pixels(res_id, width, height)
    }
    fn export_scanout(&mut self, res_id: u32) -> Result<ScanoutExport, RendererError> {
        self.client.export_scanout(res_id)
    }
    fn reset(&mut self) {
        self.client.reset()
    }
}

fn flatten<T>(r: Result<Result<T, RendererError>, RendererError>) -> Result<T, RendererError> {
    r.and_then(|inner| inner)
}

impl Renderer for RendererClient {
    fn name(&self) -> &'static str {
        self.name
    }

    fn capsets(&self) -> Vec<CapsetInfo> {
        self.capsets.clone()
    }

    fn capset(&mut self, id: u32, version: u32) -> Result<Vec<u8>, RendererError> {
        flatten(self.call(move |r| r.capset(id, version)))
    }

    fn context_create(
        &mut self,
        ctx_id: u32,
        capset: u32,
        name: &[u8],
    ) -> Result<(), RendererError> {
        let name = name.to_vec();
        flatten(self.call(move |r| r.context_create(ctx_id, capset, &name)))
    }

    fn context_destroy(&mut self, ctx_id: u32) {
        self.post("CTX_DESTROY", move |r| r.context_destroy(ctx_id));
    }

    fn context_attach(&mut self, ctx_id: u32, res_id: u32) {
        self.post("CTX_ATTACH_RESOURCE", move |r| {
            r.context_attach(ctx_id, res_id)
        });
    }

    fn context_detach(&mut self, ctx_id: u32, res_id: u32) {
        self.post("CTX_DETACH_RESOURCE", move |r| {
            r.context_detach(ctx_id, res_id)
        });
    }

    fn resource_create_3d(&mut self, res_id: u32, args: &Resource3d) -> Result<(), RendererError> {
        let args = *args;
        flatten(self.call(move |r| r.resource_create_3d(res_id, &args)))
    }

    fn attach_backing(
        &mut self,
        res_id: u32,
        memory: &GuestMemory,
        ranges: &[(u64, u64)],
    ) -> Result<(), RendererError> {
        let (memory, ranges) = (memory.clone(), ranges.to_vec());
        flatten(self.call(move |r| r.attach_backing(res_id, &memory, &ranges)))
    }

    fn detach_backing(&mut self, res_id: u32) {
        self.post("RESOURCE_DETACH_BACKING", move |r| r.detach_backing(res_id));
    }

    fn resource_create_blob(
        &mut self,
        res_id: u32,
        request: &BlobRequest,
        backing: Option<(&GuestMemory, &[(u64, u64)])>,
    ) -> Result<(), RendererError> {
        let request = *request;
        let backing = backing.map(|(m, r)| (m.clone(), r.to_vec()));
        flatten(self.call(move |r| {
            let backing = backing.as_ref().map(|(m, ranges)| (m, ranges.as_slice()));
            r.resource_create_blob(res_id, &request, backing)
        }))
    }

    fn resource_unref(&mut self, res_id: u32) {
        self.post("RESOURCE_UNREF", move |r| r.resource_unref(res_id));
    }

    fn transfer_to_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        transfer: &Transfer3d,
    ) -> Result<(), RendererError> {
        let t = *transfer;
        flatten(self.call(move |r| r.transfer_to_host(ctx_id, res_id, &t)))
    }

    fn transfer_from_host(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        transfer: &Transfer3d,
    ) -> Result<(), RendererError> {
        let t = *transfer;
        flatten(self.call(move |r| r.transfer_from_host(ctx_id, res_id, &t)))
    }

    fn submit(&mut self, ctx_id: u32, commands: &[u8]) -> Result<(), RendererError> {
        let commands = commands.to_vec();
        flatten(self.call(move |r| r.submit(ctx_id, &commands)))
    }

    fn create_fence(
        &mut self,
        ctx_id: u32,
        ring: Option<u32>,
        fence_id: u64,
    ) -> Result<(), RendererError> {
        flatten(self.call(move |r| r.create_fence(ctx_id, ring, fence_id)))
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.poll_fd.as_fd()
    }

    fn poll(&mut self) -> Vec<RendererEvent> {
        match self.call(|r| r.poll()) {
            Ok(events) => events,
            Err(_) if !self.lost_reported => {
                self.lost_reported = true;
                let why = self
                    .stopped()
                    .unwrap_or_else(|| "the renderer thread ended".into());
                vec![RendererEvent::RendererLost(why)]
            }
            Err(_) => Vec::new(),
        }
    }

    fn export_blob(&mut self, res_id: u32) -> Result<ExportedBlob, RendererError> {
        flatten(self.call(move |r| r.export_blob(res_id)))
    }

    fn resource_info(&mut self, res_id: u32) -> Result<ResourceInfo, RendererError> {
        flatten(self.call(move |r| r.resource_info(res_id)))
    }

    fn read_pixels(
        &mut self,
        res_id: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, RendererError> {
        flatten(self.call(move |r| r.read_pixels(res_id, width, height)))
    }

    fn export_scanout(&mut self, res_id: u32) -> Result<ScanoutExport, RendererError> {
        flatten(self.call(move |r| r.export_scanout(res_id)))
    }

    fn reset(&mut self) {
        // Waits, so that nothing sent after the reset meets the old state.
        let _ = self.call(|r| r.reset());
    }
}
