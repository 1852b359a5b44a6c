//! `vm-lanes --bench render`: the renderer benchmark of BENCHMARKS.md, not a lane (nothing
//! here is a pass/fail target). Same guest image, same QEMU, same run:
//!
//! - `glmark2-es2-drm --off-screen` through virgl behind QEMU 10's `vhost-user-gpu-pci`,
//!   with rust-vmm's `vhost-device-gpu` 0.2.0 (virglrenderer backend, built in the render
//!   root) as it starts by default (GLES host contexts) and with `--use-gles false` (desktop
//!   GL host contexts, as ours), then with ours; all on the render root's virglrenderer 1.1
//!   and llvmpipe. Off-screen, because the peer refuses scanouts of 3D resources (its log says
//!   `resource N has no handle`) while ours reads them back for QEMU's display: on-screen
//!   scores would compare different work.
//! - guest write bandwidth into a mapped venus HOST_VISIBLE allocation against the same
//!   program writing ordinary guest memory (`vk-hostmem --bench`), ours behind QEMU 11.1
//!   (the peer serves no venus).
//!
//! Both backends log at `warn` (the lane's `debug` makes the peer log every command).
//! The guest checks that glmark2 really ran on virgl (not the guest's own llvmpipe), else
//! the run fails instead of printing a score.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::lanes::Env;
use crate::render::{self, GuestRun, RenderRoot, RootProcess, Setup, PEER_IN_ROOT};
use crate::rootfs;
use crate::vm::{HoldReply, Qemu};
use crate::Error;

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

/// Every figure the guest printed on a line that starts with `name` (`@@BENCH glmark2 N`,
/// `bench: ratio mapped/ordinary: X`...): the first number after it, in order.
fn figures(results: &Path, name: &str) -> Result<Vec<f64>, Error> {
    let text = fs::read_to_string(results).map_err(|e| Error::io(results, e))?;
    let found: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.split_whitespace().find_map(|w| w.parse().ok()))
        })
        .collect();
    if found.is_empty() {
        return Err(Error::Lane(format!(
            "no {name:?} figure in {}",
            results.display()
        )));
    }
    Ok(found)
}

/// The median of `values` (not empty).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One glmark2 run behind QEMU 10 with the backend that `start` launched in `dir`.
/// What every glmark2 boot shares.
struct Guest<'a> {
    qemu10: &'a Path,
    image: &'a rootfs::Image,
    vk_hostmem: &'a Path,
    timeout: Duration,
}

fn glmark2_run(
    env: &mut Env,
    guest: &Guest<'_>,
    label: &str,
    dir: &Path,
    socket: &Path,
) -> Result<f64, Error> {
    let extra = crate::lanes::vhost_user_gpu_args(socket, crate::lanes::QEMU10_GPU_DEVICE);
    let tally = render::guest_run(
        env,
        dir,
        guest.image,
        guest.vk_hostmem,
        GuestRun {
            label,
            qemu: Qemu::System(guest.qemu10.to_path_buf()),
            extra,
            env: Vec::new(),
            steps: vec![("glmark2", "/lane/glmark2")],
            files: vec![("glmark2", GLMARK2)],
        },
        guest.timeout,
        &mut |_| HoldReply::Continue,
    )?;
    if tally.failed > 0 {
        return Err(Error::Lane(format!(
            "{label}: the guest's glmark2 run failed; see {}",
            dir.join("results.log").display()
        )));
    }
    Ok(figures(&dir.join("results.log"), "@@BENCH glmark2")?[0])
}

/// Runs the benchmark and prints its figures.
pub fn bench(env: &mut Env, timeout: Duration) -> Result<(), Error> {
    let Setup {
        cache,
        qemu10,
        image,
        render: RenderRoot { root },
        vk_hostmem,
        ours,
    } = Setup::prepare(env, "warn")?;
    render::peer(&cache, &root)?;
    let guest = Guest {
        qemu10: &qemu10,
        image: &image,
        vk_hostmem: &vk_hostmem,
        timeout,
    };

    // 1. The peer, as it starts by default (GLES host contexts: the guest gets ES 3.0), and
    // with desktop GL host contexts as ours uses.
    let mut peer_scores = Vec::new();
    for (label, gles) in [("peer", "true"), ("peer-gl", "false")] {
        let dir = crate::lanes::lane_dir(&format!("render-bench/{label}"))?;
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
                "--use-gles".into(),
                gles.into(),
            ],
            "warn",
        )?;
        peer.wait_for(&socket)?;
        peer_scores.push(glmark2_run(env, &guest, label, &dir, &socket)?);
    }

    // 2. Ours, same guest, same QEMU.
    let dir = crate::lanes::lane_dir("render-bench/ours")?;
    let (backend, socket) = ours.start(&root, &dir, &[])?;
    let our_score = glmark2_run(env, &guest, "ours", &dir, &socket)?;
    drop(backend);

    // 3. Write bandwidth into mapped venus HOST_VISIBLE memory (QEMU 11.1, blobs).
    let dir = crate::lanes::lane_dir("render-bench/ours-hostmem")?;
    let (backend, socket) = ours.start(&root, &dir, &[])?;
    let extra = crate::lanes::vhost_user_gpu_args(&socket, crate::lanes::QEMU11_GPU_DEVICE);
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
            // Three runs in one boot (each the best of 5 rounds): the median is reported.
            steps: vec![
                (
                    "host-visible-1",
                    "/lane/vk-hostmem --device Venus --size 33554432 --bench",
                ),
                (
                    "host-visible-2",
                    "/lane/vk-hostmem --device Venus --size 33554432 --bench",
                ),
                (
                    "host-visible-3",
                    "/lane/vk-hostmem --device Venus --size 33554432 --bench",
                ),
            ],
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
    let mapped = figures(&results, "bench: write to mapped HOST_VISIBLE memory:")?;
    let ordinary = figures(&results, "bench: write to ordinary memory:")?;
    let ratios = figures(&results, "bench: ratio mapped/ordinary:")?;

    let (peer_gles, peer_gl) = (peer_scores[0], peer_scores[1]);
    println!("bench render: glmark2-es2-drm --off-screen (4 scenes x 5 s), QEMU 10 vhost-user-gpu-pci, TCG guest");
    println!("bench render:   ours (vhost-user-gpu)                        score {our_score:.0}");
    println!("bench render:   peer (vhost-device-gpu 0.2.0, default: GLES) score {peer_gles:.0}");
    println!("bench render:   peer (vhost-device-gpu 0.2.0, --use-gles false) score {peer_gl:.0}");
    println!(
        "bench render:   ours / best peer = {:.2}",
        our_score / peer_gles.max(peer_gl).max(1.0)
    );
    println!("bench render: guest writes, 8 x 32 MiB, best of 5 rounds, 3 runs (vk-hostmem --bench), QEMU 11.1");
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "bench render:   mapped venus HOST_VISIBLE MB/s: {}; ordinary guest memory MB/s: {}",
        list(&mapped),
        list(&ordinary)
    );
    println!(
        "bench render:   ratio mapped/ordinary: median {:.3} (runs: {})",
        median(&ratios),
        ratios
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
