use std::mem::size_of;

use super::*;

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

/// One sample of every command, with the wire size of its `virtio-bindings` struct.
fn samples() -> Vec<(GpuCommand, usize)> {
    use GpuCommand as C;
    let entries = vec![
        MemEntry {
            addr: 0x1000,
            length: 4096,
        },
        MemEntry {
            addr: 0x8000,
            length: 100,
        },
    ];
    let pos = CursorPos {
        scanout_id: 1,
        x: 10,
        y: 20,
    };
    vec![
        (C::GetDisplayInfo, CTRL_HEADER_SIZE),
        (
            C::GetEdid { scanout_id: 3 },
            size_of::<vg::virtio_gpu_cmd_get_edid>(),
        ),
        (
            C::ResourceCreate2d {
                resource_id: 1,
                format: format::B8G8R8X8_UNORM,
                width: 640,
                height: 480,
            },
            size_of::<vg::virtio_gpu_resource_create_2d>(),
        ),
        (
            C::ResourceUnref { resource_id: 9 },
            size_of::<vg::virtio_gpu_resource_unref>(),
        ),
        (
            C::SetScanout {
                rect: rect(1, 2, 3, 4),
                scanout_id: 0,
                resource_id: 5,
            },
            size_of::<vg::virtio_gpu_set_scanout>(),
        ),
        (
            C::ResourceFlush {
                rect: rect(5, 6, 7, 8),
                resource_id: 2,
            },
            size_of::<vg::virtio_gpu_resource_flush>(),
        ),
        (
            C::TransferToHost2d {
                rect: rect(0, 1, 2, 3),
                offset: 0x1_0000_0000,
                resource_id: 4,
            },
            size_of::<vg::virtio_gpu_transfer_to_host_2d>(),
        ),
        (
            C::ResourceAttachBacking {
                resource_id: 4,
                entries: entries.clone(),
            },
            size_of::<vg::virtio_gpu_resource_attach_backing>() + 2 * MEM_ENTRY_SIZE,
        ),
        (
            C::ResourceDetachBacking { resource_id: 4 },
            size_of::<vg::virtio_gpu_resource_detach_backing>(),
        ),
        (
            C::GetCapsetInfo { capset_index: 0 },
            size_of::<vg::virtio_gpu_get_capset_info>(),
        ),
        (
            C::GetCapset {
                capset_id: 5,
                capset_version: 0,
            },
            size_of::<vg::virtio_gpu_get_capset>(),
        ),
        (
            C::ResourceAssignUuid { resource_id: 4 },
            size_of::<vg::virtio_gpu_resource_assign_uuid>(),
        ),
        (
            C::ResourceCreateBlob(CreateBlob {
                resource_id: 6,
                blob_mem: BLOB_MEM_GUEST,
                blob_flags: BLOB_FLAG_USE_MAPPABLE,
                blob_id: 0x1234_5678_9abc,
                size: 4196,
                entries,
            }),
            size_of::<vg::virtio_gpu_resource_create_blob>() + 2 * MEM_ENTRY_SIZE,
        ),
        (
            C::SetScanoutBlob(ScanoutBlob {
                rect: rect(0, 0, 64, 64),
                scanout_id: 0,
                resource_id: 6,
                width: 64,
                height: 64,
                format: format::B8G8R8A8_UNORM,
                strides: [256, 0, 0, 0],
                offsets: [0, 1, 2, 3],
            }),
            size_of::<vg::virtio_gpu_set_scanout_blob>(),
        ),
        (
            C::CtxCreate {
                context_init: 5,
                debug_name: "sommelier".into(),
            },
            size_of::<vg::virtio_gpu_ctx_create>(),
        ),
        (C::CtxDestroy, size_of::<vg::virtio_gpu_ctx_destroy>()),
        (
            C::CtxAttachResource { resource_id: 3 },
            size_of::<vg::virtio_gpu_ctx_resource>(),
        ),
        (
            C::CtxDetachResource { resource_id: 3 },
            size_of::<vg::virtio_gpu_ctx_resource>(),
        ),
        (
            C::ResourceCreate3d {
                resource_id: 8,
                resource: Resource3d {
                    target: 2,
                    format: 1,
                    bind: 2,
                    width: 64,
                    height: 32,
                    depth: 1,
                    array_size: 1,
                    last_level: 3,
                    nr_samples: 4,
                    flags: 5,
                },
            },
            size_of::<vg::virtio_gpu_resource_create_3d>(),
        ),
        (
            C::TransferToHost3d {
                resource_id: 8,
                transfer: Transfer3d {
                    bx: Box3d {
                        x: 1,
                        y: 2,
                        z: 3,
                        w: 4,
                        h: 5,
                        d: 6,
                    },
                    offset: 0x1_0000_0007,
                    level: 8,
                    stride: 9,
                    layer_stride: 10,
                },
            },
            size_of::<vg::virtio_gpu_transfer_host_3d>(),
        ),
        (
            C::TransferFromHost3d {
                resource_id: 8,
                transfer: Transfer3d {
                    offset: 11,
                    ..Transfer3d::default()
                },
            },
            size_of::<vg::virtio_gpu_transfer_host_3d>(),
        ),
        (
            C::Submit3d {
                commands: vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
            },
            size_of::<vg::virtio_gpu_cmd_submit>() + 9,
        ),
        (
            C::ResourceMapBlob {
                resource_id: 6,
                offset: 0x20_0000,
            },
            size_of::<vg::virtio_gpu_resource_map_blob>(),
        ),
        (
            C::ResourceUnmapBlob { resource_id: 6 },
            size_of::<vg::virtio_gpu_resource_unmap_blob>(),
        ),
        (
            C::UpdateCursor(CursorUpdate {
                pos,
                resource_id: 7,
                hot_x: 1,
                hot_y: 2,
            }),
            size_of::<vg::virtio_gpu_update_cursor>(),
        ),
        (
            C::MoveCursor { pos },
            size_of::<vg::virtio_gpu_update_cursor>(),
        ),
    ]
}

fn fenced_header() -> CtrlHeader {
    CtrlHeader {
        ctrl_type: 0,
        flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
        fence_id: 0xdead_beef_0000_0001,
        ctx_id: 3,
        ring_idx: 1,
    }
}

#[test]
fn every_command_round_trips_with_the_bindings_size() {
    let samples = samples();
    assert_eq!(samples.len(), 26, "one sample per command");
    for (command, wire_size) in samples {
        let mut buf = Vec::new();
        command.encode(&fenced_header(), &mut buf);
        assert_eq!(buf.len(), wire_size, "{} wire size", command.name());
        let (hdr, decoded) = GpuCommand::decode(&buf).unwrap();
        assert_eq!(decoded, command);
        assert_eq!(hdr.ctrl_type, command.ctrl_type());
        assert_eq!(hdr.fence_id, 0xdead_beef_0000_0001);
        assert_eq!(hdr.ctx_id, 3);
        assert_eq!(hdr.ring_idx, 1);
    }
}

#[test]
fn every_truncation_of_every_command_is_an_error() {
    for (command, _) in samples() {
        let mut buf = Vec::new();
        command.encode(&CtrlHeader::default(), &mut buf);
        for len in 0..buf.len() {
            match GpuCommand::decode(&buf[..len]) {
                Err(DecodeError::Truncated { needed, got, .. }) => {
                    assert_eq!(got, len);
                    assert!(needed > len, "{}: needed {needed} at {len}", command.name());
                }
                other => panic!("{} truncated to {len}: {other:?}", command.name()),
            }
        }
    }
}

#[test]
fn trailing_bytes_after_a_command_are_ignored() {
    for (command, _) in samples() {
        let mut buf = Vec::new();
        command.encode(&CtrlHeader::default(), &mut buf);
        buf.extend_from_slice(&[0xaa; 77]);
        let (_, decoded) = GpuCommand::decode(&buf).unwrap();
        // SUBMIT_3D takes exactly `size` bytes, not the trailing ones.
        assert_eq!(decoded, command);
    }
}

#[test]
fn entry_count_larger_than_the_buffer_is_truncated() {
    let mut buf = Vec::new();
    GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![MemEntry {
            addr: 0,
            length: 4096,
        }],
    }
    .encode(&CtrlHeader::default(), &mut buf);
    buf[28..32].copy_from_slice(&2u32.to_le_bytes()); // claims two entries, carries one
    assert!(matches!(
        GpuCommand::decode(&buf),
        Err(DecodeError::Truncated {
            needed: 64,
            got: 48,
            ..
        })
    ));
}

#[test]
fn oversized_counts_are_refused_before_allocating() {
    let mut buf = Vec::new();
    GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![],
    }
    .encode(&CtrlHeader::default(), &mut buf);
    buf[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        GpuCommand::decode(&buf),
        Err(DecodeError::TooLarge {
            what: "nr_entries",
            ..
        })
    ));

    let mut buf = Vec::new();
    GpuCommand::ResourceCreateBlob(CreateBlob {
        resource_id: 1,
        blob_mem: BLOB_MEM_GUEST,
        blob_flags: 0,
        blob_id: 0,
        size: 4096,
        entries: vec![],
    })
    .encode(&CtrlHeader::default(), &mut buf);
    buf[36..40].copy_from_slice(&(MAX_MEM_ENTRIES + 1).to_le_bytes());
    assert!(matches!(
        GpuCommand::decode(&buf),
        Err(DecodeError::TooLarge { .. })
    ));

    let mut buf = Vec::new();
    GpuCommand::Submit3d { commands: vec![] }.encode(&CtrlHeader::default(), &mut buf);
    buf[24..28].copy_from_slice(&(MAX_SUBMIT_SIZE + 1).to_le_bytes());
    assert!(matches!(
        GpuCommand::decode(&buf),
        Err(DecodeError::TooLarge {
            what: "submit size",
            ..
        })
    ));
    // A size within the limit but beyond the buffer is truncated.
    buf[24..28].copy_from_slice(&100u32.to_le_bytes());
    assert!(matches!(
        GpuCommand::decode(&buf),
        Err(DecodeError::Truncated { needed: 132, .. })
    ));
}

#[test]
fn unknown_types_are_reported() {
    for t in [0u32, 0x10e, 0x20a, 0x302, 0x1100, u32::MAX] {
        let mut buf = Vec::new();
        CtrlHeader::new(t).encode(&mut buf);
        buf.extend_from_slice(&[0; 64]);
        assert_eq!(GpuCommand::decode(&buf), Err(DecodeError::UnknownType(t)));
    }
}

#[test]
fn ctx_create_name_honours_nlen_and_nul() {
    let mut buf = Vec::new();
    GpuCommand::CtxCreate {
        context_init: 5,
        debug_name: "abcdef".into(),
    }
    .encode(&CtrlHeader::default(), &mut buf);
    buf[24..28].copy_from_slice(&3u32.to_le_bytes());
    let (_, c) = GpuCommand::decode(&buf).unwrap();
    assert_eq!(
        c,
        GpuCommand::CtxCreate {
            context_init: 5,
            debug_name: "abc".into()
        }
    );
    // nlen larger than the array is clamped, not trusted.
    buf[24..28].copy_from_slice(&1000u32.to_le_bytes());
    let (_, c) = GpuCommand::decode(&buf).unwrap();
    assert_eq!(
        c,
        GpuCommand::CtxCreate {
            context_init: 5,
            debug_name: "abcdef".into()
        }
    );
}

#[test]
fn response_header_echoes_fence_ctx_and_ring() {
    let mut out = Vec::new();
    GpuResponse::OkNoData.encode(&fenced_header(), &mut out);
    let hdr = CtrlHeader::decode(&out).unwrap();
    assert_eq!(hdr.ctrl_type, resp::OK_NODATA);
    assert_eq!(hdr.flags, FLAG_FENCE | FLAG_INFO_RING_IDX);
    assert_eq!(hdr.fence_id, 0xdead_beef_0000_0001);
    assert_eq!(hdr.ctx_id, 3);
    assert_eq!(hdr.ring_idx, 1);

    // Without FLAG_FENCE nothing fence-related is echoed.
    let request = CtrlHeader {
        flags: FLAG_INFO_RING_IDX,
        fence_id: 77,
        ring_idx: 2,
        ctx_id: 9,
        ..Default::default()
    };
    let mut out = Vec::new();
    GpuResponse::Err(GpuError::InvalidParameter).encode(&request, &mut out);
    let hdr = CtrlHeader::decode(&out).unwrap();
    assert_eq!(hdr.ctrl_type, resp::ERR_INVALID_PARAMETER);
    assert_eq!(hdr.flags, 0);
    assert_eq!(hdr.fence_id, 0);
    assert_eq!(hdr.ring_idx, 0);
    assert_eq!(hdr.ctx_id, 9);
}

#[test]
fn responses_have_the_bindings_sizes_and_round_trip() {
    let modes = vec![DisplayMode {
        rect: rect(0, 0, 1280, 800),
        enabled: true,
        flags: 0,
    }];
    let cases = vec![
        (GpuResponse::OkNoData, CTRL_HEADER_SIZE),
        (
            GpuResponse::OkDisplayInfo(modes),
            size_of::<vg::virtio_gpu_resp_display_info>(),
        ),
        (
            GpuResponse::OkCapsetInfo {
                capset_id: 5,
                max_version: 0,
                max_size: 16,
            },
            size_of::<vg::virtio_gpu_resp_capset_info>(),
        ),
        (GpuResponse::OkCapset(vec![1; 16]), CTRL_HEADER_SIZE + 16),
        (
            GpuResponse::OkEdid(vec![7; 128]),
            size_of::<vg::virtio_gpu_resp_edid>(),
        ),
        (
            GpuResponse::OkResourceUuid([9; 16]),
            size_of::<vg::virtio_gpu_resp_resource_uuid>(),
        ),
        (
            GpuResponse::OkMapInfo {
                map_info: MAP_CACHE_WC,
            },
            size_of::<vg::virtio_gpu_resp_map_info>(),
        ),
        (GpuResponse::Err(GpuError::OutOfMemory), CTRL_HEADER_SIZE),
    ];
    for (response, size) in cases {
        let mut out = Vec::new();
        response.encode(&CtrlHeader::default(), &mut out);
        assert_eq!(out.len(), size, "{response:?}");
        let (_, decoded) = GpuResponse::decode(&out).unwrap();
        match (&response, &decoded) {
            (GpuResponse::OkDisplayInfo(a), GpuResponse::OkDisplayInfo(b)) => {
                assert_eq!(&b[..a.len()], &a[..]);
                assert!(b[a.len()..].iter().all(|m| !m.enabled));
            }
            _ => assert_eq!(decoded, response),
        }
    }
}

#[test]
fn formats_map_to_fourccs_with_the_same_byte_order() {
    use crate::protocol::fourcc;
    assert_eq!(
        format::to_drm_fourcc(format::B8G8R8A8_UNORM),
        Some(fourcc::ARGB8888)
    );
    assert_eq!(
        format::to_drm_fourcc(format::X8B8G8R8_UNORM),
        Some(fourcc::RGBX8888)
    );
    assert_eq!(
        format::to_drm_fourcc(format::R8G8B8X8_UNORM),
        Some(fourcc::XBGR8888)
    );
    assert_eq!(format::to_drm_fourcc(0), None);
    assert_eq!(format::to_drm_fourcc(5), None);
}
