//! Fuzz target (b): the whole device core fed from guest memory and a command sequence
//! built from the input (see `vhost_user_gpu_fuzz` for the format and the checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhost_user_gpu_fuzz::run(data);
});
