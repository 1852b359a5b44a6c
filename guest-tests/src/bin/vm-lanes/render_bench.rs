//! `vm-lanes --bench render`: the renderer benchmark of BENCHMARKS.md, not a lane (nothing
//! here is a pass/fail target). Same guest image, same QEMU, same run:
//!
//! - `glmark2-es2-drm --off-screen` through virgl behind QEMU 10's `vhost-user-gpu-pci`,
//!   once with rust-vmm's `vhost-device-gpu` 0.2.0 (virglrenderer backend, built in the
//!   render root) and once with ours; both on the render root's virglrenderer 1.1 and
//!   llvmpipe. Off-screen, because the peer refuses scanouts of 3D resources (its log says
//!   `resource N has no handle`) while ours reads them back for QEMU's display: on-screen
//!   scores would compare different work.
//! - guest write bandwidth into a mapped venus HOST_VISIBLE allocation against the same
//!   program writing ordinary guest memory (`vk-hostmem --bench`), ours behind QEMU 11.1
//!   (the peer serves no venus).
//!
//! The guest checks that glmark2 really ran on virgl (not the guest's own llvmpipe), else
//! the run fails instead of printing a score.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::lanes::Env;
use crate::render::{self, GuestRun, Ours, RootProcess};
use crate::rootfs::{self, Spec};
use crate::vm::{HoldReply, Qemu};
use crate::{binaries, fetch, step, Error};

/// Where the peer is installed inside the render root.
const PEER_IN_ROOT: &str = "/opt/vhost-device-gpu/bin/vhost-device-gpu";

/// The scenes: glmark2's default set is far too long under TCG; these four cover vertex
/// work, texturing, fragment shading and many draw calls, five seconds each.
const GLMARK2: &str = r#"#!/bin/sh
out=$(timeout 1200 glmark2-es2-drm --off-screen \
  -b build:use-vbo=true:duration=5 \
  -b texture:texture-filter=linear:duration=5 \
  -b shading:shading=phong:duration=5 \
  -b bump:bump-render=high-poly:duration=5 2>&1); rc=$?
echo "$out" | grep -E "GL_RENDERER|GL_VERSION|FPS|Score|rror" | sed 's/^/  glmark2: /'
score=$(echo "$out" | sed -n 's/.*glmark2 Score: *\([0-9][0-9]*\).*/\1/p')
if [ $rc -ne 0 ] || [ -z "$score" ]; then
  echo "FAILED glmark2: exit $rc, no score"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
if ! echo "$out" | grep -q "GL_RENDERER:.*virgl"; then
  echo "FAILED glmark2: not rendered through virgl"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
echo "@@BENCH glmark2 $score"
echo "ok glmark2: score $score through virgl"; echo "1 passed, 0 failed, 0 skipped"
"#;

/// One figure the guest printed as `@@BENCH NAME VALUE` (or `bench: ratio ...: VALUE`).
fn figure(results: &Path, name: &str) -> Result<f64, Error> {
    let text = fs::read_to_string(results).map_err(|e| Error::io(results, e))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.split_whitespace().find_map(|w| w.parse().ok()))
        })
        .ok_or_else(|| Error::Lane(format!("no {name:?} figure in {}", results.display())))
}

/// One glmark2 run behind QEMU 10 with the backend that `start` launched in `dir`.
fn glmark2_run(
    env: &mut Env,
    label: &str,
    dir: &Path,
    socket: &Path,
    qemu10: &Path,
    image: &rootfs::Image,
    vk_hostmem: &Path,
    timeout: Duration,
) -> Result<f64, Error> {
    let mut extra = crate::lanes::vhost_user_memory();
    extra.extend([
        "-chardev".into(),
        format!("socket,id=gpu,path={}", socket.display()),
        "-device".into(),
        "vhost-user-gpu-pci,chardev=gpu".into(),
    ]);
    let tally = render::guest_run(
        env,
        dir,
        image,
        vk_hostmem,
        GuestRun {
            label,
            qemu: Qemu::System(qemu10.to_path_buf()),
            extra,
            env: Vec::new(),
            steps: vec![("glmark2", "/lane/glmark2")],
            files: vec![("glmark2", GLMARK2)],
        },
        timeout,
        &mut |_| HoldReply::Continue,
    )?;
    if tally.failed > 0 {
        return Err(Error::Lane(format!(
            "{label}: the guest's glmark2 run failed; see {}",
            dir.join("results.log").display()
        )));
    }
    figure(&dir.join("results.log"), "@@BENCH glmark2")
}

/// Runs the benchmark and prints its figures.
pub fn bench(env: &mut Env, timeout: Duration) -> Result<(), Error> {
    let cache = env.cache()?;
    let qemu10 = fetch::qemu10(env.apt()?)?;
    let image = rootfs::image(&cache, &Spec::render())?;
    let root = render::render_root(&cache)?.root;
    let built = step("build: vk-hostmem (dynamic, for the guest image)", || {
        binaries::host(&["build", "-p", "guest-tests", "--bin", "vk-hostmem"])
    })?;
    let vk_hostmem = binaries::find(&built, "vk-hostmem", false)?.path.clone();
    let ours = Ours {
        binary: crate::lanes::host_backend()?,
    };
    if !root.join(PEER_IN_ROOT.trim_start_matches('/')).exists() {
        return Err(Error::Setup(format!(
            "the peer is missing from the render root ({PEER_IN_ROOT}); remove {} to rebuild it",
            cache.join("render-root.complete").display()
        )));
    }

    // 1. The peer.
    let dir = crate::lanes::lane_dir("render-bench/peer")?;
    let socket = dir.join("gpu.sock");
    let _ = fs::remove_file(&socket);
    let mut peer = RootProcess::start(
        &root,
        &dir,
        "vhost-device-gpu",
        &[
            PEER_IN_ROOT.to_string(),
            "--socket-path".into(),
            socket.display().to_string(),
            "--gpu-mode".into(),
            "virglrenderer".into(),
        ],
    )?;
    peer.wait_for(&socket)?;
    let peer_score = glmark2_run(
        env,
        "peer",
        &dir,
        &socket,
        &qemu10,
        &image,
        &vk_hostmem,
        timeout,
    )?;
    drop(peer);

    // 2. Ours, same guest, same QEMU.
    let dir = crate::lanes::lane_dir("render-bench/ours")?;
    let (backend, socket) = ours.start(&root, &dir, &["--sandbox".into(), "off".into()])?;
    let our_score = glmark2_run(
        env,
        "ours",
        &dir,
        &socket,
        &qemu10,
        &image,
        &vk_hostmem,
        timeout,
    )?;
    drop(backend);

    // 3. Write bandwidth into mapped venus HOST_VISIBLE memory (QEMU 11.1, blobs).
    let dir = crate::lanes::lane_dir("render-bench/ours-hostmem")?;
    let (backend, socket) = ours.start(&root, &dir, &["--sandbox".into(), "off".into()])?;
    let mut extra = crate::lanes::vhost_user_memory();
    extra.extend([
        "-chardev".into(),
        format!("socket,id=gpu,path={}", socket.display()),
        "-device".into(),
        "vhost-user-test-device-pci,virtio-id=16,num_vqs=2,config_size=16,chardev=gpu".into(),
    ]);
    let tally = render::guest_run(
        env,
        &dir,
        &image,
        &vk_hostmem,
        GuestRun {
            label: "ours-hostmem",
            qemu: Qemu::Chroot(root.clone()),
            extra,
            env: Vec::new(),
            steps: vec![(
                "host-visible",
                "/lane/vk-hostmem --device Venus --size 33554432 --bench",
            )],
            files: Vec::new(),
        },
        timeout,
        &mut |_| HoldReply::Continue,
    )?;
    drop(backend);
    if tally.failed > 0 {
        return Err(Error::Lane(format!(
            "ours-hostmem: vk-hostmem failed; see {}",
            dir.join("results.log").display()
        )));
    }
    let results = dir.join("results.log");
    let mapped = figure(&results, "bench: write to mapped HOST_VISIBLE memory:")?;
    let ordinary = figure(&results, "bench: write to ordinary memory:")?;
    let ratio = figure(&results, "bench: ratio mapped/ordinary:")?;

    println!("bench render: glmark2-es2-drm --off-screen (4 scenes x 5 s), QEMU 10 vhost-user-gpu-pci, TCG guest");
    println!("bench render:   ours (vhost-user-gpu)         score {our_score:.0}");
    println!("bench render:   peer (vhost-device-gpu 0.2.0) score {peer_score:.0}");
    println!(
        "bench render:   ours / peer = {:.2}",
        our_score / peer_score.max(1.0)
    );
    println!("bench render: guest writes, 8 x 32 MiB, best of 5 (vk-hostmem --bench), QEMU 11.1");
    println!("bench render:   mapped venus HOST_VISIBLE {mapped:.1} MB/s, ordinary guest memory {ordinary:.1} MB/s, ratio {ratio:.3}");
    Ok(())
}
