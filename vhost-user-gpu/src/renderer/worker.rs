//! The render worker: `vhost-user-gpu --render-worker --fd N`, a process of our own binary
//! that runs virglrenderer ([`VirglRenderer`], the same renderer the in-process thread
//! runs) and serves the backend's requests over the [`wire`](super::wire) socket.
//!
//! Order at start: it dies with its parent (`PR_SET_PDEATHSIG`, and an end of stream on
//! the socket ends it too), reads [`Request::Start`], loads the library and starts the
//! render server (venus), confines itself with the renderer's Landlock rules before Mesa
//! starts its threads, initialises the renderer, installs the 3D seccomp profile and
//! answers [`Reply::Started`] with its capsets. Then it answers requests in order and sends
//! fence completions and a lost render server as [`Event`]s. A fault in Mesa or the library
//! (SIGSEGV, abort) ends this process only; the backend sees the end of the stream.

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use vm_memory::{FileOffset, GuestAddress};

use super::wire::{
    recv_frame, send_message, Event, Reply, Request, StartConfig, WireRendererError, WorkerMessage,
};
use super::{VirglConfig, VirglRenderer};
use crate::device::ports::{GuestMemory, Renderer, RendererError, RendererEvent};

/// How the worker confines itself (the backend's sandbox, given by `main`: the renderer
/// does not depend on the sandbox module).
pub trait Confinement {
    /// Called after the library is loaded and the render server started, before the
    /// library initialises (and Mesa starts its threads): the file-system rules.
    fn before_init(&mut self, config: &StartConfig) -> Result<(), RendererError>;
    /// Called once the renderer runs, before the first request: the system-call filter.
    /// `render_server`: its pid (venus); `venus`: venus contexts are served.
    fn after_init(
        &mut self,
        config: &StartConfig,
        render_server: Option<u32>,
        venus: bool,
    ) -> Result<(), RendererError>;
}

/// Why the worker stopped before serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The socket to the backend failed.
    #[error("render worker: the connection to the backend: {0}")]
    Wire(#[from] super::wire::WireError),
    /// The first request was not a start.
    #[error("render worker: the backend did not start with a start request")]
    NoStart,
    /// The backend that started it is gone.
    #[error("render worker: the backend (pid {0}) is gone")]
    Orphan(u32),
}

/// Runs the worker on `socket` until the backend closes it. `parent`: the backend's pid,
/// checked once the parent-death signal is armed.
pub fn run(
    socket: OwnedFd,
    parent: Option<u32>,
    confinement: &mut dyn Confinement,
) -> Result<(), WorkerError> {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // Inherited without close-on-exec; the render server this process starts must not hold
    // it (the backend would not see the end of the stream when this process dies).
    rustix::io::fcntl_setfd(&socket, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| WorkerError::Wire(std::io::Error::from(e).into()))?;
    if let Some(parent) = parent {
        if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
            return Err(WorkerError::Orphan(parent));
        }
    }
    let frame = recv_frame(socket.as_fd())?;
    let Request::Start(config) = Request::decode(&frame.payload, frame.fds.len())? else {
        return Err(WorkerError::NoStart);
    };
    let mut renderer = match start(&config, confinement) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("render worker: {e}");
            send_message(
                socket.as_fd(),
                &WorkerMessage::Reply(Reply::Err(WireRendererError::from(&e))),
                None,
            )?;
            return Ok(());
        }
    };
    send_message(
        socket.as_fd(),
        &WorkerMessage::Reply(Reply::Started {
            capsets: renderer.capsets(),
            render_server: renderer.render_server_pid(),
            venus_withheld: renderer.venus_withheld().map(str::to_string),
        }),
        None,
    )?;
    serve(&socket, &mut renderer)
}

/// Builds the renderer and confines this process (file rules before Mesa's threads start,
/// the system-call filter once it runs).
fn start(
    config: &StartConfig,
    confinement: &mut dyn Confinement,
) -> Result<VirglRenderer, RendererError> {
    let virgl_config = VirglConfig {
        library: config.library.clone(),
        virgl: config.virgl,
        venus: config.venus,
        render_server: config.render_server.clone(),
        legacy_venus: config.legacy_venus,
        ..VirglConfig::default()
    };
    let renderer =
        VirglRenderer::new_confined(&virgl_config, |_server| confinement.before_init(config))?;
    let venus = renderer
        .capsets()
        .iter()
        .any(|c| c.id == crate::protocol::CAPSET_VENUS);
    confinement.after_init(config, renderer.render_server_pid(), venus)?;
    Ok(renderer)
}

/// Answers requests until the backend closes the socket.
fn serve(socket: &OwnedFd, renderer: &mut VirglRenderer) -> Result<(), WorkerError> {
    let mut memory: Result<GuestMemory, String> = Err("no guest memory table was received".into());
    loop {
        let (request_ready, events_ready) = {
            let renderer_fd = renderer.poll_fd();
            let mut fds = [
                PollFd::new(socket, PollFlags::IN),
                PollFd::new(&renderer_fd, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(WorkerError::Wire(std::io::Error::from(e).into())),
            }
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
        };
        if events_ready {
            send_events(socket, renderer)?;
        }
        if !request_ready {
            continue;
        }
        let frame = match recv_frame(socket.as_fd()) {
            Ok(f) => f,
            Err(super::wire::WireError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let request = Request::decode(&frame.payload, frame.fds.len())?;
        let fence = matches!(request, Request::CreateFence { .. });
        if let Some((reply, fd)) = handle(renderer, &mut memory, request, frame.fds) {
            send_message(
                socket.as_fd(),
                &WorkerMessage::Reply(reply),
                fd.as_ref().map(AsFd::as_fd),
            )?;
        }
        if fence {
            // A fence that completed at once is reported without waiting for the fd.
            send_events(socket, renderer)?;
        }
    }
}

fn send_events(socket: &OwnedFd, renderer: &mut VirglRenderer) -> Result<(), WorkerError> {
    for event in renderer.poll() {
        let event = match event {
            RendererEvent::Fence(f) => Event::Fence(f),
            RendererEvent::RenderServerLost(s) => Event::RenderServerLost(s),
            RendererEvent::RendererLost(s) => Event::RendererLost(s),
        };
        send_message(socket.as_fd(), &WorkerMessage::Event(event), None)?;
    }
    Ok(())
}

/// The guest memory of a table: each region mapped from its fd.
fn map_table(
    regions: &[super::wire::RegionDesc],
    fds: Vec<OwnedFd>,
) -> Result<GuestMemory, String> {
    let ranges = regions
        .iter()
        .zip(fds)
        .map(|(r, fd)| {
            let len = usize::try_from(r.len).map_err(|_| "region too large".to_string())?;
            Ok((
                GuestAddress(r.guest_addr),
                len,
                Some(FileOffset::new(std::fs::File::from(fd), r.file_offset)),
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    GuestMemory::from_ranges_with_files(ranges).map_err(|e| format!("cannot map it: {e}"))
}

fn done(r: Result<(), RendererError>) -> Reply {
    match r {
        Ok(()) => Reply::Ok,
        Err(e) => Reply::Err(WireRendererError::from(&e)),
    }
}

fn failed(e: RendererError) -> Reply {
    Reply::Err(WireRendererError::from(&e))
}

/// Runs one request; the reply (and its fd) when it is answered.
fn handle(
    r: &mut VirglRenderer,
    memory: &mut Result<GuestMemory, String>,
    request: Request,
    fds: Vec<OwnedFd>,
) -> Option<(Reply, Option<OwnedFd>)> {
    let guest = |memory: &Result<GuestMemory, String>| {
        memory
            .clone()
            .map_err(|e| RendererError::Failed(format!("render worker: guest memory: {e}")))
    };
    let reply = match request {
        Request::Start(_) => failed(RendererError::Invalid("the renderer runs already".into())),
        Request::Capset { id, version } => match r.capset(id, version) {
            Ok(data) => Reply::Data(data),
            Err(e) => failed(e),
        },
        Request::ContextCreate {
            ctx_id,
            capset,
            name,
        } => done(r.context_create(ctx_id, capset, &name)),
        Request::ContextDestroy { ctx_id } => {
            r.context_destroy(ctx_id);
            return None;
        }
        Request::ContextAttach { ctx_id, res_id } => {
            r.context_attach(ctx_id, res_id);
            return None;
        }
        Request::ContextDetach { ctx_id, res_id } => {
            r.context_detach(ctx_id, res_id);
            return None;
        }
        Request::ResourceCreate3d { res_id, args } => done(r.resource_create_3d(res_id, &args)),
        Request::MemoryTable { regions } => {
            *memory = map_table(&regions, fds);
            if let Err(e) = memory {
                log::warn!("render worker: guest memory table: {e}");
            }
            return None;
        }
        Request::AttachBacking { res_id, ranges } => match guest(memory) {
            Ok(m) => done(r.attach_backing(res_id, &m, &ranges)),
            Err(e) => failed(e),
        },
        Request::DetachBacking { res_id } => {
            r.detach_backing(res_id);
            return None;
        }
        Request::ResourceCreateBlob {
            res_id,
            request,
            backing,
        } => match backing {
            None => done(r.resource_create_blob(res_id, &request, None)),
            Some(ranges) => match guest(memory) {
                Ok(m) => done(r.resource_create_blob(res_id, &request, Some((&m, &ranges)))),
                Err(e) => failed(e),
            },
        },
        Request::ResourceUnref { res_id } => {
            r.resource_unref(res_id);
            return None;
        }
        Request::TransferToHost {
            ctx_id,
            res_id,
            transfer,
        } => done(r.transfer_to_host(ctx_id, res_id, &transfer)),
        Request::TransferFromHost {
            ctx_id,
            res_id,
            transfer,
        } => done(r.transfer_from_host(ctx_id, res_id, &transfer)),
        Request::Submit { ctx_id, commands } => done(r.submit(ctx_id, &commands)),
        Request::CreateFence {
            ctx_id,
            ring,
            fence_id,
        } => done(r.create_fence(ctx_id, ring, fence_id)),
        Request::ExportBlob { res_id } => match r.export_blob(res_id) {
            Ok(blob) => {
                return Some((
                    Reply::Blob {
                        kind: blob.kind,
                        fd_offset: blob.fd_offset,
                        map_info: blob.renderer_map_info,
                    },
                    Some(blob.fd),
                ))
            }
            Err(e) => failed(e),
        },
        Request::ResourceInfo { res_id } => match r.resource_info(res_id) {
            Ok(info) => Reply::Info(info),
            Err(e) => failed(e),
        },
        Request::ReadPixels {
            res_id,
            width,
            height,
        } => match r.read_pixels(res_id, width, height) {
            Ok(data) => Reply::Data(data),
            Err(e) => failed(e),
        },
        Request::ExportScanout { res_id } => match r.export_scanout(res_id) {
            Ok(s) => {
                return Some((
                    Reply::Scanout {
                        stride: s.stride,
                        offset: s.offset,
                        drm_fourcc: s.drm_fourcc,
                        width: s.width,
                        height: s.height,
                    },
                    Some(s.fd),
                ))
            }
            Err(e) => failed(e),
        },
        Request::Reset => {
            r.reset();
            Reply::Ok
        }
    };
    Some((reply, None))
}
