//! The command handlers: [`GpuDevice::execute`] dispatches each [`GpuCommand`] to the file
//! of its group.
//! - `two_d.rs`: RESOURCE_CREATE_2D, ATTACH/DETACH_BACKING, TRANSFER_TO_HOST_2D;
//! - `blob.rs`: RESOURCE_CREATE_BLOB, RESOURCE_ASSIGN_UUID, RESOURCE_MAP/UNMAP_BLOB;
//! - `context.rs`: capsets, CTX_*, SUBMIT_3D (the cross-domain protocol);
//! - `render.rs`: renderer contexts (virgl, venus): their capsets, contexts and streams;
//! - `channel.rs`: cross-domain channels (INIT's channel, SEND, WRITE, POLL, events, blobs
//!   from the compositor);
//! - `scanout.rs`: GET_DISPLAY_INFO, GET_EDID, SET_SCANOUT(_BLOB), RESOURCE_FLUSH, cursors.
//!
//! Handlers reach state only through its owners' APIs (the resource table, the context
//! table, the scanouts, the region allocator) and the ports.

mod blob;
mod channel;
mod context;
mod render;
mod scanout;
mod snapshot;
mod two_d;

pub(crate) use render::offered_capsets;

use super::reject::CmdResult;
use super::GpuDevice;
use crate::device::ports::GuestMemory;
use crate::protocol::{CtrlHeader, GpuCommand, GpuResponse};

impl GpuDevice {
    /// Runs one decoded command.
    pub(crate) fn execute(
        &mut self,
        mem: &GuestMemory,
        hdr: &CtrlHeader,
        command: GpuCommand,
    ) -> CmdResult {
        use GpuCommand as C;
        match command {
            C::GetDisplayInfo => Ok(self.display_info()),
            C::GetEdid { scanout_id } => self.get_edid(scanout_id),
            C::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => self.resource_create_2d(resource_id, format, width, height),
            C::ResourceUnref { resource_id } => self.resource_unref(resource_id),
            C::SetScanout {
                rect,
                scanout_id,
                resource_id,
            } => self.set_scanout(scanout_id, resource_id, rect),
            C::ResourceFlush { rect, resource_id } => self.resource_flush(mem, resource_id, rect),
            C::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => self.transfer_to_host_2d(mem, resource_id, rect, offset),
            C::ResourceAttachBacking {
                resource_id,
                entries,
            } => self.attach_backing(mem, resource_id, entries),
            C::ResourceDetachBacking { resource_id } => self.detach_backing(resource_id),
            C::GetCapsetInfo { capset_index } => self.get_capset_info(capset_index),
            C::GetCapset {
                capset_id,
                capset_version,
            } => self.get_capset(capset_id, capset_version),
            C::ResourceAssignUuid { resource_id } => self.assign_uuid(resource_id),
            C::ResourceCreateBlob(blob) => self.create_blob(mem, hdr.ctx_id, blob),
            C::SetScanoutBlob(blob) => self.set_scanout_blob(blob),
            C::CtxCreate {
                context_init,
                debug_name,
            } => self.ctx_create(hdr.ctx_id, context_init, debug_name),
            C::CtxDestroy => self.ctx_destroy(hdr.ctx_id),
            C::CtxAttachResource { resource_id } => self.ctx_attach(hdr.ctx_id, resource_id),
            C::CtxDetachResource { resource_id } => self.ctx_detach(hdr.ctx_id, resource_id),
            C::ResourceCreate3d {
                resource_id,
                resource,
            } => self.resource_create_3d(resource_id, resource),
            C::TransferToHost3d {
                resource_id,
                transfer,
            } => self.transfer_3d(hdr.ctx_id, resource_id, transfer, true),
            C::TransferFromHost3d {
                resource_id,
                transfer,
            } => self.transfer_3d(hdr.ctx_id, resource_id, transfer, false),
            C::Submit3d { commands } => self.submit_3d(mem, hdr, &commands),
            C::ResourceMapBlob {
                resource_id,
                offset,
            } => self.map_blob(resource_id, offset),
            C::ResourceUnmapBlob { resource_id } => self.unmap_blob(resource_id),
            C::UpdateCursor(update) => self.update_cursor(mem, update),
            C::MoveCursor { pos } => self.move_cursor(pos),
        }
    }

    fn resource_unref(&mut self, resource_id: u32) -> CmdResult {
        self.resources.get(resource_id)?;
        self.destroy_resource(resource_id);
        Ok(GpuResponse::OkNoData)
    }
}
