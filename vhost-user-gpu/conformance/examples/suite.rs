//! Runs the conformance suite against a backend named by `VUG_BACKEND` (or the first
//! argument after `--backend`), without building the `vhost-user-gpu` test target.
//!
//! `VUG_BACKEND=/usr/lib/qemu/vhost-user-gpu VUG_BACKEND_PEER=qemu cargo run -p vug-conformance --example suite`

fn main() {
    let default =
        std::env::var_os("VUG_DEFAULT_BACKEND").unwrap_or_else(|| "vhost-user-gpu".into());
    vug_conformance::suite::main(std::path::Path::new(&default))
}
