//! Fuzz target: the render worker's wire decoder (`renderer::wire`), both directions. The
//! backend treats the worker as untrusted (a guest may have taken it over through Mesa), so
//! what the worker sends is hostile input here.
//!
//! Input: the first byte is the number of file descriptors the frame came with (0-3), the
//! rest the payload. Properties: decoding never panics and never allocates more than the
//! input announces and holds; a decoded message encodes to bytes that decode to the same
//! message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_gpu::renderer::wire::{Request, WorkerMessage};

fuzz_target!(|data: &[u8]| {
    let Some((&fds, payload)) = data.split_first() else {
        return;
    };
    let fds = usize::from(fds % 4);
    if let Ok(request) = Request::decode(payload, fds) {
        let again = request.encode();
        let decoded = Request::decode(&again, request.fd_count()).expect("re-encoded request");
        let lossy = matches!(&request, Request::Start(_));
        if !lossy {
            assert_eq!(request, decoded, "request round trip");
        }
    }
    if let Ok(message) = WorkerMessage::decode(payload, fds) {
        let again = message.encode();
        let decoded =
            WorkerMessage::decode(&again, message.fd_count()).expect("re-encoded message");
        // Texts are decoded lossily (invalid UTF-8 becomes U+FFFD), so only the kind is
        // compared for messages that carry one.
        assert_eq!(
            std::mem::discriminant(&message),
            std::mem::discriminant(&decoded),
            "message round trip"
        );
    }
});
