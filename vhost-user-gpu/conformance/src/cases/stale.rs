//! No stale data: every byte a guest can see in a fresh resource, a fresh blob or a fresh
//! range of the host-visible region is zero, whatever the guest (or an earlier guest
//! buffer) wrote there before. The cases run with the allocator the suite is run with
//! (`VUG_ALLOCATOR` / the suite default), so each lane checks its own allocator.
//!
//! Each case runs in the hostile suite's frame (exact answers, a normal command afterwards,
//! no leaked fd or mapping).

use super::blob::{self, CrossDomain, CTX_ID};
use super::hostile::{drop_cross_domain, guarded, ok};
use super::two_d::{display_matches, Backing};
use super::{ensure, pattern, Case, CaseResult, Harness, Need};
use crate::frontend::Frontend;
use crate::gpu::{self, features, format, BlobLayout, Rect};

fn map_need() -> Need {
    Need::All(vec![
        Need::Features(features::VIRGL | features::CONTEXT_INIT | features::RESOURCE_BLOB),
        Need::HostVisibleRegion,
    ])
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "stale::host_blob_second_allocation_of_a_blob_id_is_zero",
            need: map_need(),
            run: second_allocation_of_blob_id,
        },
        Case {
            name: "stale::region_range_reused_by_a_larger_blob_is_zero",
            need: map_need(),
            run: range_reused_by_larger_blob,
        },
        Case {
            name: "stale::region_range_reused_at_a_shifted_offset_is_zero",
            need: map_need(),
            run: range_reused_shifted,
        },
        Case {
            name: "stale::region_range_after_unref_while_mapped_is_zero",
            need: map_need(),
            run: range_after_unref_while_mapped,
        },
        Case {
            name: "stale::fresh_2d_resource_shows_zeros",
            need: Need::Nothing,
            run: fresh_2d_shows_zeros,
        },
        Case {
            name: "stale::fresh_guest_blob_shows_only_guest_memory",
            need: Need::Features(features::RESOURCE_BLOB),
            run: fresh_guest_blob_shows_guest_memory,
        },
    ]
}

/// Reads `len` bytes of the region at `offset` and requires them all zero.
fn region_zero(fe: &Frontend, what: &str, offset: u64, len: u64) -> CaseResult {
    let region = fe.shmem().ok_or("no host-visible region")?;
    let bytes = region
        .read(offset, len as usize)
        .map_err(|e| format!("{what}: reading the region: {e}"))?;
    let nonzero = bytes.iter().position(|&b| b != 0);
    ensure(fe, nonzero.is_none(), || {
        format!(
            "{what}: byte {:#x} of the fresh mapping at {offset:#x} is {:#04x}, not 0",
            nonzero.unwrap_or(0),
            nonzero.map_or(0, |i| bytes[i])
        )
    })
}

fn dirty(fe: &Frontend, offset: u64, len: u64, seed: u32) -> CaseResult {
    let region = fe.shmem().ok_or("no host-visible region")?;
    region
        .write(offset, &pattern(len as usize, seed))
        .map_err(|e| format!("writing the mapped blob: {e}"))
}

fn page_round(n: u64) -> u64 {
    n.next_multiple_of(4096)
}

fn second_allocation_of_blob_id(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut cd = CrossDomain::init(fe)?;
        let reqs = cd.create(fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        let len = page_round(reqs.size);
        blob::map(fe, 1, 0, reqs.size)?;
        dirty(fe, 0, len, 1)?;
        // A second blob from the same requirements: a new buffer, zero, not an alias.
        ok(
            fe,
            "CREATE_BLOB HOST3D again from the same blob_id",
            gpu::resource_create_blob(
                CTX_ID,
                2,
                gpu::BLOB_MEM_HOST3D,
                gpu::BLOB_FLAG_MAPPABLE,
                u64::from(reqs.blob_id),
                reqs.size,
                &[],
            ),
        )?;
        blob::map(fe, 2, len, reqs.size)?;
        region_zero(fe, "second blob of one blob_id", len, len)?;
        let region = fe.shmem().ok_or("no region")?;
        let first = region.read(0, len as usize).map_err(|e| e.to_string())?;
        ensure(fe, first == pattern(len as usize, 1), || {
            "the first blob changed when the second was created".into()
        })?;
        for id in [1, 2] {
            ok(fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, id))?;
            ok(fe, "UNREF", gpu::resource_unref(id))?;
        }
        drop_cross_domain(fe)
    })
}

fn range_reused_by_larger_blob(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut cd = CrossDomain::init(fe)?;
        let small = cd.create(fe, 1, 32, 32, gpu::BLOB_FLAG_MAPPABLE)?;
        blob::map(fe, 1, 0, small.size)?;
        dirty(fe, 0, page_round(small.size), 2)?;
        ok(fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, 1))?;
        ok(fe, "UNREF", gpu::resource_unref(1))?;
        let large = cd.create(fe, 2, 128, 96, gpu::BLOB_FLAG_MAPPABLE)?;
        blob::map(fe, 2, 0, large.size)?;
        region_zero(
            fe,
            "larger blob over a used range",
            0,
            page_round(large.size),
        )?;
        ok(fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, 2))?;
        ok(fe, "UNREF", gpu::resource_unref(2))?;
        drop_cross_domain(fe)
    })
}

fn range_reused_shifted(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut cd = CrossDomain::init(fe)?;
        let a = cd.create(fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        blob::map(fe, 1, 4096, a.size)?;
        dirty(fe, 4096, page_round(a.size), 3)?;
        ok(fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, 1))?;
        // The same buffer mapped again one page lower: what the guest wrote is still its
        // own data (the blob lives on), shifted; a new blob there is zero.
        let b = cd.create(fe, 2, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        blob::map(fe, 2, 0, b.size)?;
        region_zero(
            fe,
            "new blob over a shifted used range",
            0,
            page_round(b.size),
        )?;
        ok(fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, 2))?;
        blob::map(fe, 1, 0, a.size)?;
        let region = fe.shmem().ok_or("no region")?;
        let back = region
            .read(0, page_round(a.size) as usize)
            .map_err(|e| e.to_string())?;
        ensure(fe, back == pattern(page_round(a.size) as usize, 3), || {
            "the first blob lost its contents when mapped again elsewhere".into()
        })?;
        ok(fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, 1))?;
        ok(fe, "UNREF", gpu::resource_unref(1))?;
        ok(fe, "UNREF", gpu::resource_unref(2))?;
        drop_cross_domain(fe)
    })
}

fn range_after_unref_while_mapped(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let mut cd = CrossDomain::init(fe)?;
        let a = cd.create(fe, 1, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        blob::map(fe, 1, 0, a.size)?;
        dirty(fe, 0, page_round(a.size), 4)?;
        ok(fe, "UNREF while mapped", gpu::resource_unref(1))?;
        blob::region_empty(fe, "UNREF while mapped")?;
        let b = cd.create(fe, 2, 64, 64, gpu::BLOB_FLAG_MAPPABLE)?;
        blob::map(fe, 2, 0, b.size)?;
        region_zero(
            fe,
            "blob mapped where a destroyed blob was",
            0,
            page_round(b.size),
        )?;
        ok(fe, "UNMAP_BLOB", gpu::resource_unmap_blob(CTX_ID, 2))?;
        ok(fe, "UNREF", gpu::resource_unref(2))?;
        drop_cross_domain(fe)
    })
}

fn fresh_2d_shows_zeros(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let (w, h) = (32u32, 16u32);
        let img = super::bgra_pattern(w, h, 5);
        for (id, data) in [(1u32, Some(&img)), (2, None)] {
            ok(
                fe,
                "CREATE_2D",
                gpu::resource_create_2d(id, format::B8G8R8A8_UNORM, w, h),
            )?;
            if let Some(data) = data {
                let b = Backing::new(fe, data.len())?;
                b.write(fe, 0, data)?;
                ok(fe, "ATTACH", gpu::resource_attach_backing(id, &b.entries))?;
                ok(
                    fe,
                    "TRANSFER",
                    gpu::transfer_to_host_2d(id, Rect::sized(w, h), 0),
                )?;
            }
            ok(
                fe,
                "SET_SCANOUT",
                gpu::set_scanout(0, id, Rect::sized(w, h)),
            )?;
            ok(fe, "FLUSH", gpu::resource_flush(id, Rect::sized(w, h)))?;
            match data {
                Some(d) => display_matches(fe, 0, w, h, d)?,
                // Never written by the guest: all zero, nothing of resource 1.
                None => display_matches(fe, 0, w, h, &vec![0; (w * h * 4) as usize])?,
            }
            ok(fe, "UNREF", gpu::resource_unref(id))?;
        }
        Ok(())
    })
}

fn fresh_guest_blob_shows_guest_memory(harness: &Harness) -> CaseResult {
    guarded(harness, |fe| {
        let (w, h) = (32u32, 16u32);
        let len = (w * h * 4) as usize;
        let layout = BlobLayout {
            width: w,
            height: h,
            format: format::B8G8R8A8_UNORM,
            stride: w * 4,
            offset: 0,
        };
        let img = super::bgra_pattern(w, h, 6);
        let backing = Backing::new(fe, len)?;
        for (id, data) in [(1u32, img.clone()), (2, vec![0u8; len])] {
            // The guest's pages hold `data` (zeroed for the second blob, as a fresh guest
            // allocation would be); the device must show exactly that.
            backing.write(fe, 0, &data)?;
            ok(
                fe,
                "CREATE_BLOB GUEST",
                gpu::resource_create_blob(
                    0,
                    id,
                    gpu::BLOB_MEM_GUEST,
                    0,
                    0,
                    len as u64,
                    &backing.entries,
                ),
            )?;
            ok(
                fe,
                "SET_SCANOUT_BLOB",
                gpu::set_scanout_blob(0, id, Rect::sized(w, h), layout),
            )?;
            ok(fe, "FLUSH", gpu::resource_flush(id, Rect::sized(w, h)))?;
            display_matches(fe, 0, w, h, &data)?;
            ok(fe, "UNREF", gpu::resource_unref(id))?;
        }
        backing.free(fe);
        Ok(())
    })
}
