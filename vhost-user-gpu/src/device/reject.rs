//! A refused command: the virtio-gpu error to answer and the reason to log.

use super::budget::{Exceeded, Kind};
use crate::protocol::{GpuError, GpuResponse};

/// A refused command: the error to answer and the reason to log.
#[derive(Debug)]
pub(crate) struct Reject {
    pub(crate) error: GpuError,
    pub(crate) reason: String,
}

/// Builds a [`Reject`].
pub(crate) fn reject(error: GpuError, reason: impl Into<String>) -> Reject {
    Reject {
        error,
        reason: reason.into(),
    }
}

/// What a command handler returns.
pub(crate) type CmdResult = Result<GpuResponse, Reject>;

/// `ERR_OUT_OF_MEMORY` for a charge past a budget; `what` names the object asked for
/// (`resource_id 7`, `ctx_id 3: GET_IMAGE_REQUIREMENTS`).
pub(crate) fn over_budget(what: &str, e: Exceeded) -> Reject {
    let Exceeded {
        kind,
        wanted,
        used,
        limit,
    } = e;
    reject(
        GpuError::OutOfMemory,
        match kind {
            Kind::HostBytes => format!(
                "{what}: about {wanted} bytes would exceed the resource memory limit ({used} of \
                 {limit} bytes in use)"
            ),
            Kind::Resources | Kind::Contexts | Kind::PendingFences | Kind::Attachments => {
                format!("{what}: the limit of {limit} {kind} is reached")
            }
            Kind::Fds => format!(
                "{what}: the limit of {limit} open files for guest objects is reached (the \
                 open-file limit less a reserve for the frontend's memory regions)"
            ),
        },
    )
}
