//! Fuzz target (a): the command decoder, bytes -> `GpuCommand`.
//!
//! Properties: decoding never panics; a decoded command encodes to bytes that decode to the
//! same command (the encoders are what the test frontends use); response decoding never
//! panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_gpu::protocol::{cross_domain, CtrlHeader, GpuCommand, GpuResponse};

fuzz_target!(|data: &[u8]| {
    let _ = CtrlHeader::decode(data);
    let _ = GpuResponse::decode(data);
    if let Ok((hdr, command)) = GpuCommand::decode(data) {
        let mut again = Vec::new();
        command.encode(&hdr, &mut again);
        let (hdr2, command2) = GpuCommand::decode(&again).expect("re-encoded command decodes");
        assert_eq!(hdr, hdr2, "header round trip");
        let lossy_name = matches!(&command, GpuCommand::CtxCreate { debug_name, .. }
            if debug_name.contains('\u{fffd}') || debug_name.len() > 64);
        if !lossy_name {
            assert_eq!(command, command2, "command round trip");
        }
        if let GpuCommand::Submit3d { commands } = &command {
            for c in cross_domain::commands(commands) {
                let _ = c;
            }
        }
    }
});
