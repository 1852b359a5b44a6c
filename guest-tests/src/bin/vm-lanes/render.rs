//! The `render` lane: real guest userspace (Debian trixie's Mesa: virgl for OpenGL, venus
//! for Vulkan) rendering through a vhost-user-gpu backend with a 3D renderer, on a root
//! file system image ([`crate::rootfs`]).
//!
//! The host side runs in a "render root": a `debootstrap` trixie root with virglrenderer
//! 1.1, Mesa 25 (llvmpipe, lavapipe), QEMU 11.1 and the peer backend rust-vmm
//! `vhost-device-gpu` 0.2.0 built there with its virglrenderer backend (it needs
//! virglrenderer >= 1.0, which bookworm does not have). For now the lane runs the peer
//! behind QEMU 10's `vhost-user-gpu-pci`: the proof that the guest image renders through a
//! vhost-user backend on this machine; our backend joins when its renderer is wired into
//! the device.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use guest_tests::report::{case_line, Outcome, Tally};

use crate::binaries;
use crate::fetch;
use crate::lanes::Env;
use crate::rootfs::{self, LaneFiles, Spec};
use crate::vm::{Boot, HoldReply, KillOnDrop, Qemu};
use crate::{run, run_output, step, Error};

/// Packages of the render root (host side, trixie).
const RENDER_ROOT_PACKAGES: [&str; 19] = [
    // virglrenderer and the render server, Mesa's software drivers.
    "libvirglrenderer1",
    "virgl-server",
    "libegl-mesa0",
    "libgl1-mesa-dri",
    "libgles2",
    "libegl1",
    "libgl1",
    "mesa-vulkan-drivers",
    // A display for QEMU's own GL device (GTK on Xvfb).
    "xvfb",
    "xauth",
    // Building the peer.
    "ca-certificates",
    "gcc",
    "libc6-dev",
    "pkg-config",
    "libvirglrenderer-dev",
    "libclang-dev",
    "libdrm-dev",
    "libgbm-dev",
    "libepoxy-dev",
];

/// Bumped when the render root's recipe changes.
const RENDER_ROOT_VERSION: u32 = 1;

/// The render root: a trixie root with the renderer stack, QEMU 11.1 and the peer.
pub struct RenderRoot {
    /// The root directory.
    pub root: PathBuf,
    /// The peer, as a path inside the root.
    pub peer: &'static str,
}

/// Where the peer is installed inside the render root.
const PEER_IN_ROOT: &str = "/opt/vhost-device-gpu/bin/vhost-device-gpu";

/// Returns the render root, building it first when missing.
pub fn render_root(cache: &Path) -> Result<RenderRoot, Error> {
    let root = cache.join("render-root");
    let stamp = cache.join("render-root.complete");
    let recipe = format!(
        "render-root {RENDER_ROOT_VERSION}\n{}\n",
        RENDER_ROOT_PACKAGES.join(" ")
    );
    let done = RenderRoot {
        root: root.clone(),
        peer: PEER_IN_ROOT,
    };
    if fs::read_to_string(&stamp).is_ok_and(|s| s.starts_with(&recipe)) {
        return Ok(done);
    }
    let _ = fs::remove_file(&stamp);
    step(
        "render root: debootstrap trixie with virglrenderer and Mesa",
        || {
            if root.exists() {
                fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
            }
            run(Command::new("debootstrap")
                .arg("--variant=minbase")
                .arg(format!("--include={}", RENDER_ROOT_PACKAGES.join(",")))
                .arg("trixie")
                .arg(&root)
                .arg("http://deb.debian.org/debian"))
        },
    )?;
    step(
        "render root: QEMU 11.1 with OpenGL from trixie-backports",
        || {
            let sources = root.join("etc/apt/sources.list.d/trixie-backports.sources");
            fs::write(
                &sources,
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie-backports\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            )
            .map_err(|e| Error::io(&sources, e))?;
            run(Command::new("chroot")
                .arg(&root)
                .args(["apt-get", "update", "-qq"]))?;
            run(Command::new("chroot")
                .arg(&root)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args([
                    "apt-get",
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "-t",
                    "trixie-backports",
                    "qemu-system-x86",
                    "qemu-system-modules-opengl",
                    "qemu-system-gui",
                ]))?;
            run(Command::new("chroot").arg(&root).args(["apt-get", "clean"]))
        },
    )?;
    step(
        "render root: cargo install vhost-device-gpu 0.2.0 (virglrenderer)",
        || build_peer(cache, &root),
    )?;
    let versions = run_output(Command::new("chroot").arg(&root).args([
        "dpkg-query",
        "-W",
        "-f",
        "${Package} ${Version}\\n",
        "libvirglrenderer1",
        "mesa-vulkan-drivers",
        "qemu-system-x86",
    ]))?;
    fs::write(&stamp, format!("{recipe}{versions}")).map_err(|e| Error::io(&stamp, e))?;
    Ok(done)
}

/// Builds the peer inside the root with the host's Rust toolchain (bind-mounted), its
/// target directory cached beside the root so a rebuild is incremental.
fn build_peer(cache: &Path, root: &Path) -> Result<(), Error> {
    let home = std::env::var("HOME").map_err(|_| Error::Setup("HOME is not set".into()))?;
    let target = cache.join("peers/vhost-device-gpu-virgl-target");
    fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    fs::copy(ca, root.join("root/host-ca.crt")).map_err(|e| Error::io(ca, e))?;
    let script = "set -e; root=$1; home=$2; target=$3; \
        mkdir -p \"$root/root/.rustup\" \"$root/root/.cargo\" \"$root/build-target\"; \
        mount --bind \"$home/.rustup\" \"$root/root/.rustup\"; \
        mount --bind \"$home/.cargo\" \"$root/root/.cargo\"; \
        mount --bind \"$target\" \"$root/build-target\"; \
        mount -t proc proc \"$root/proc\"; \
        exec chroot \"$root\" env HOME=/root PATH=/root/.cargo/bin:/usr/bin:/bin \
          CARGO_HTTP_CAINFO=/root/host-ca.crt CARGO_TARGET_DIR=/build-target \
          cargo install --locked vhost-device-gpu --version 0.2.0 --no-default-features \
          --features backend-virgl --root /opt/vhost-device-gpu";
    run(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
        ])
        .arg("build-peer")
        .arg(root)
        .arg(&home)
        .arg(&target))
}

/// A backend process run inside the render root (private mount namespace with `/dev`,
/// `/proc` and the lane directory bind-mounted), killed when dropped.
struct RootProcess {
    child: KillOnDrop,
    log: PathBuf,
}

impl RootProcess {
    fn start(root: &Path, dir: &Path, name: &str, argv: &[String]) -> Result<Self, Error> {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "set -e; root=$1; dir=$2; shift 2; \
                 mount --rbind /dev \"$root/dev\"; \
                 mount -t proc proc \"$root/proc\"; \
                 mkdir -p \"$root$dir\"; mount --bind \"$dir\" \"$root$dir\"; \
                 exec chroot \"$root\" \"$@\"",
            )
            .arg(name)
            .arg(root)
            .arg(dir)
            .args(argv)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Setup(format!("cannot start {name}: {e}")))?;
        Ok(RootProcess {
            child: KillOnDrop(child),
            log,
        })
    }

    fn wait_for(&mut self, socket: &Path) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                return Err(Error::Lane(format!(
                    "the backend exited ({status}) before listening; see {}",
                    self.log.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Lane(format!(
                    "the backend did not create {} within 30 s",
                    socket.display()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn crashed(&mut self) -> Option<String> {
        match self.child.0.try_wait() {
            Ok(Some(status)) if !status.success() => Some(format!(
                "the backend exited with {status}; see {}",
                self.log.display()
            )),
            _ => None,
        }
    }
}

/// Modules the guest loads before switching to its root (virtio-gpu and what it needs).
const GUEST_MODULES: [&str; 5] = [
    "drm",
    "drm_kms_helper",
    "drm_shmem_helper",
    "virtio_dma_buf",
    "virtio-gpu",
];

/// Guest-side checks of the virgl path, one case line each, then the summary.
const CHECK_VIRGL: &str = r#"#!/bin/sh
pass=0; fail=0
ok() { echo "ok $1"; pass=$((pass+1)); }
bad() { echo "FAILED $1: $2"; fail=$((fail+1)); }
info=$(eglinfo -B -p gbm 2>&1); echo "$info" | sed 's/^/  eglinfo: /'
if echo "$info" | grep -q "OpenGL.*renderer.*virgl"; then ok "eglinfo: GBM platform renders with virgl"
else bad "eglinfo" "no virgl renderer on the GBM platform"; fi
out=$(timeout 120 kmscube -c 30 2>&1); rc=$?
echo "$out" | grep -v "extensions:" | tail -4 | sed 's/^/  kmscube: /'
if [ $rc -eq 0 ] && echo "$out" | grep -qi "renderer:.*virgl"; then ok "kmscube: 30 frames on KMS through virgl"
else bad "kmscube" "exit $rc"; fi
echo "$pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
"#;

/// `vulkaninfo --summary`, its devices printed; with an argument, a device whose name
/// contains it must be there, without one, no venus device may be (the backend serves
/// none: the guest must not see one).
const CHECK_VULKAN: &str = r#"#!/bin/sh
out=$(timeout 120 vulkaninfo --summary 2>&1); rc=$?
echo "$out" | grep -E "deviceName|driverName|apiVersion|ERROR" | sed 's/^/  vulkaninfo: /'
if [ $rc -ne 0 ]; then echo "FAILED vulkaninfo --summary: exit $rc"; echo "0 passed, 1 failed, 0 skipped"; exit 1; fi
if [ -n "$1" ]; then
  if echo "$out" | grep -q "deviceName.*$1"; then echo "ok vulkaninfo: a $1 device"; echo "1 passed, 0 failed, 0 skipped"
  else echo "FAILED vulkaninfo: no $1 device"; echo "0 passed, 1 failed, 0 skipped"; exit 1; fi
else
  if echo "$out" | grep -q "driverName.*venus"; then echo "FAILED vulkaninfo: a venus device although none is served"; echo "0 passed, 1 failed, 0 skipped"; exit 1
  else echo "ok vulkaninfo: no venus device (none served)"; echo "1 passed, 0 failed, 0 skipped"; fi
fi
"#;

/// One guest boot of the lane.
struct GuestRun<'a> {
    label: &'a str,
    qemu: Qemu,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    steps: Vec<(&'a str, &'a str)>,
}

fn guest_run(
    env: &mut Env,
    dir: &Path,
    image: &rootfs::Image,
    vk_hostmem: &Path,
    run: GuestRun<'_>,
    timeout: Duration,
) -> Result<Tally, Error> {
    let kernel = env.kernel()?;
    let mut init = String::from(rootfs::LANE_INIT_PRELUDE);
    for (name, command) in &run.steps {
        init.push_str(&format!("step {name} {command}\n"));
    }
    init.push_str("finish\n");
    let vk = fs::read(vk_hostmem).map_err(|e| Error::io(vk_hostmem, e))?;
    let files = LaneFiles {
        files: vec![
            ("init", 0o755, init.into_bytes()),
            ("check-virgl", 0o755, CHECK_VIRGL.as_bytes().to_vec()),
            ("check-vulkan", 0o755, CHECK_VULKAN.as_bytes().to_vec()),
            ("vk-hostmem", 0o755, vk),
        ],
    };
    let initrd = dir.join("initramfs.cpio");
    rootfs::write_initramfs(&initrd, kernel, &GUEST_MODULES, &files)?;
    let mut extra = run.extra;
    extra.extend(rootfs::drive_args(image, dir)?);
    let boot = Boot {
        qemu: &run.qemu,
        dir,
        kernel: &kernel.image,
        initramfs: &initrd,
        extra,
        env: run.env,
        timeout,
        allow_reboot: false,
    };
    let transcript = step(&format!("render lane: guest run ({})", run.label), || {
        boot.run(&mut |_| HoldReply::Continue)
    })?;
    let mut names = vec!["modules".to_string()];
    names.extend(run.steps.iter().map(|(n, _)| n.to_string()));
    Ok(crate::lanes::tally_transcript(
        &format!("render/{}", run.label),
        &transcript,
        &names,
    ))
}

fn host_case(tally: &mut Tally, name: &str, outcome: Outcome) {
    println!("{}", case_line(name, &outcome));
    tally.record(&outcome);
}

/// Runs the lane: the peer behind QEMU 10 (virgl), then QEMU 11.1's own virgl + venus
/// device (the reference for the guest's venus path).
pub fn lane(env: &mut Env, timeout: Duration) -> Result<Tally, Error> {
    let cache = env.cache()?;
    let qemu10 = fetch::qemu10(env.apt()?)?;
    let image = rootfs::image(&cache, &Spec::render())?;
    let render = render_root(&cache)?;
    let built = step("build: vk-hostmem (dynamic, for the guest image)", || {
        binaries::host(&["build", "-p", "guest-tests", "--bin", "vk-hostmem"])
    })?;
    let vk_hostmem = binaries::find(&built, "vk-hostmem", false)?.path.clone();
    let mut tally = Tally::default();

    // 1. rust-vmm vhost-device-gpu (virglrenderer) behind QEMU 10's vhost-user-gpu-pci.
    let dir = crate::lanes::lane_dir("render/peer-virgl")?;
    let socket = dir.join("gpu.sock");
    let mut backend = RootProcess::start(
        &render.root,
        &dir,
        "vhost-device-gpu",
        &[
            render.peer.to_string(),
            "--socket-path".into(),
            socket.display().to_string(),
            "--gpu-mode".into(),
            "virglrenderer".into(),
        ],
    )?;
    // The lane directory is bind-mounted at the same path in the root: the socket shows
    // up here too.
    backend.wait_for(&socket)?;
    let mut extra = crate::lanes::vhost_user_memory();
    extra.extend([
        "-chardev".into(),
        format!("socket,id=gpu,path={}", socket.display()),
        "-device".into(),
        "vhost-user-gpu-pci,chardev=gpu".into(),
    ]);
    tally.add(guest_run(
        env,
        &dir,
        &image,
        &vk_hostmem,
        GuestRun {
            label: "peer-virgl",
            qemu: Qemu::System(qemu10.clone()),
            extra,
            env: Vec::new(),
            steps: vec![
                ("virgl", "/lane/check-virgl"),
                ("vulkan", "/lane/check-vulkan"),
            ],
        },
        timeout,
    )?);
    host_case(
        &mut tally,
        "render/peer-virgl/host: backend survived the guest",
        match backend.crashed() {
            Some(why) => Outcome::Failed(why),
            None => Outcome::Passed,
        },
    );
    drop(backend);

    // 2. QEMU 11.1's own virtio-gpu-gl-pci with venus, virglrenderer 1.1 and lavapipe in
    // the render root; its GL display is GTK on Xvfb (egl-headless needs a render node).
    let dir = crate::lanes::lane_dir("render/qemu-venus")?;
    let display = ":41";
    let mut xvfb = RootProcess::start(
        &render.root,
        &dir,
        "xvfb",
        &strings(&[
            "Xvfb",
            display,
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
        ]),
    )?;
    xvfb.wait_for(&render.root.join("tmp/.X11-unix/X41"))?;
    tally.add(guest_run(
        env,
        &dir,
        &image,
        &vk_hostmem,
        GuestRun {
            label: "qemu-venus",
            qemu: Qemu::Chroot(render.root.clone()),
            extra: strings(&[
                "-m",
                "1G",
                "-machine",
                "q35",
                "-device",
                "virtio-gpu-gl-pci,venus=on,blob=on,hostmem=1G",
                "-display",
                "gtk,gl=on",
            ]),
            env: vec![("DISPLAY".into(), display.into())],
            steps: vec![
                ("virgl", "/lane/check-virgl"),
                ("vulkan", "/lane/check-vulkan Venus"),
                (
                    "host-visible",
                    "/lane/vk-hostmem --device Venus --size 33554432 --bench",
                ),
            ],
        },
        timeout,
    )?);
    Ok(tally)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
