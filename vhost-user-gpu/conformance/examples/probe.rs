//! Starts a backend, negotiates, and prints what it offers plus its display info.
//!
//! `cargo run -p vug-conformance --example probe -- /usr/lib/qemu/vhost-user-gpu qemu`

use vug_conformance::{gpu, BackendSpec, Frontend, Peer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger_lite();
    let mut args = std::env::args().skip(1);
    let program = args
        .next()
        .ok_or("usage: probe PROGRAM [ours|qemu|vhost-device-gpu] [ARGS...]")?;
    let peer = args
        .next()
        .and_then(|p| Peer::parse(&p))
        .unwrap_or(Peer::Ours);
    let spec = BackendSpec::new(program, peer).with_args(args);
    let mut fe = Frontend::spawn(spec)?;
    println!("{}", fe.describe());
    println!("config space: {:02x?}", fe.config_space());
    let resp = fe.ctrl(gpu::get_display_info())?;
    println!(
        "GET_DISPLAY_INFO -> {} ({} body bytes)",
        resp.name(),
        resp.body.len()
    );
    if let Some(d) = fe.display() {
        println!("display requests: {:?}", d.state().requests);
    }
    if std::env::var_os("PROBE_BACKEND_LOG").is_some() {
        println!("{}", fe.backend_log());
    }
    for (i, m) in resp
        .display_info()?
        .iter()
        .enumerate()
        .filter(|(_, m)| m.enabled)
    {
        println!("scanout {i}: {}x{}", m.rect.width, m.rect.height);
    }
    if let Some(d) = fe.display() {
        println!("display requests: {:?}", d.state().requests);
    }
    Ok(())
}

fn env_logger_lite() {
    struct L;
    impl log::Log for L {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            eprintln!("[{}] {}", r.level(), r.args());
        }
        fn flush(&self) {}
    }
    if std::env::var_os("PROBE_LOG").is_some() {
        let _ = log::set_logger(&L);
        log::set_max_level(log::LevelFilter::Debug);
    }
}
