//! Fuzz target (d): SUBMIT_3D streams and 3D resource commands through the device into the
//! real virglrenderer in a render worker (virgl on llvmpipe, venus in the render server); see
//! `vhost_user_gpu_fuzz::renderer` for the format and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhost_user_gpu_fuzz::renderer::run(data);
});
