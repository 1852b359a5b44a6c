//! Fuzz target (c): the cross-domain command stream of SUBMIT_3D.
//!
//! Properties: the iterator never panics, stops after the first error, consumes the buffer
//! (it cannot loop forever), and every decoded command (each layout of INIT, POLL, SEND,
//! WRITE, GET_IMAGE_REQUIREMENTS) re-encodes to a wire form that decodes to the same
//! command; the guest's decoder of channel events never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_gpu::protocol::cross_domain;

fuzz_target!(|data: &[u8]| {
    let mut seen = 0usize;
    let mut failed = false;
    for c in cross_domain::commands(data) {
        assert!(!failed, "the iterator went on after an error");
        seen += 1;
        // Every command is at least a header: more items than that means it looped.
        assert!(seen <= data.len() / cross_domain::HEADER_SIZE + 1);
        match c {
            Ok(cmd) => {
                let out = cmd.to_bytes();
                let mut again = cross_domain::commands(&out);
                assert_eq!(again.next(), Some(Ok(cmd)));
                assert_eq!(again.next(), None);
            }
            Err(_) => failed = true,
        }
    }
    let _ = cross_domain::decode_event(data);
    let _ = cross_domain::Capabilities::decode(data);
    let _ = cross_domain::ImageRequirements::decode(data);
});
