//! The `render` lane: real guest userspace (Debian trixie's Mesa: virgl for OpenGL, venus
//! for Vulkan) rendering through a vhost-user-gpu backend with a 3D renderer, on a root
//! file system image ([`crate::rootfs`]).
//!
//! The host side runs in a "render root": a `debootstrap` trixie root with virglrenderer
//! 1.1, Mesa 25 (llvmpipe, lavapipe) and QEMU 11.1; the benchmark (`--bench render`) builds
//! the peer backend rust-vmm `vhost-device-gpu` 0.2.0 there with its virglrenderer backend
//! (it needs virglrenderer >= 1.0, which bookworm does not have). The lane runs OUR backend there
//! (venus needs virglrenderer >= 1.0 too): behind QEMU 11.1's generic vhost-user device
//! (blobs mapped into the host-visible region), again with a policy that refuses the
//! mapping, and behind QEMU 10's `vhost-user-gpu-pci` (virgl without blobs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use guest_tests::pattern;
use guest_tests::report::{case_line, Outcome, Tally};

use crate::binaries;
use crate::fetch;
use crate::lanes::Env;
use crate::qmp::Qmp;
use crate::rootfs::{self, LaneFiles, Spec};
use crate::vm::{Boot, HoldReply, KillOnDrop, Qemu};
use crate::{run, run_output, step, Error};

/// Packages of the render root (host side, trixie).
const RENDER_ROOT_PACKAGES: [&str; 8] = [
    // virglrenderer and the render server, Mesa's software drivers.
    "libvirglrenderer1",
    "virgl-server",
    "libegl-mesa0",
    "libgl1-mesa-dri",
    "libgles2",
    "libegl1",
    "libgl1",
    "mesa-vulkan-drivers",
];

/// What building the peer needs in the render root (installed by [`peer`], only for the
/// benchmark).
const PEER_BUILD_PACKAGES: [&str; 9] = [
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
const RENDER_ROOT_VERSION: u32 = 2;

/// The render root: a trixie root with the renderer stack, QEMU 11.1 and what building the
/// peer needs (the peer itself is built by [`peer`], for the benchmark in BENCHMARKS.md).
pub struct RenderRoot {
    /// The root directory.
    pub root: PathBuf,
}

/// Returns the render root, building it first when missing.
pub fn render_root(cache: &Path) -> Result<RenderRoot, Error> {
    let root = cache.join("render-root");
    let stamp = cache.join("render-root.complete");
    let recipe = format!(
        "render-root {RENDER_ROOT_VERSION}\n{}\n",
        RENDER_ROOT_PACKAGES.join(" ")
    );
    let done = RenderRoot { root: root.clone() };
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
    step("render root: QEMU 11.1 from trixie-backports", || {
        fetch::install_from_trixie_backports(&root, &["qemu-system-x86"])
    })?;
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

/// Where the peer is installed inside the render root.
pub(crate) const PEER_IN_ROOT: &str = "/opt/vhost-device-gpu/bin/vhost-device-gpu";

/// The peer (rust-vmm's `vhost-device-gpu` 0.2.0 with its virglrenderer backend) in the
/// render root, built there first when missing: only the benchmark needs it, so lanes (and
/// CI) never pay its build (about 4.5 minutes on 2 cores).
pub(crate) fn peer(cache: &Path, root: &Path) -> Result<(), Error> {
    if root.join(PEER_IN_ROOT.trim_start_matches('/')).exists() {
        return Ok(());
    }
    step("render root: the peer's build dependencies", || {
        fetch::chroot_apt_install(root, &[], &PEER_BUILD_PACKAGES)
    })?;
    step(
        "render root: cargo install vhost-device-gpu 0.2.0 (virglrenderer)",
        || build_peer(cache, root),
    )
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
pub(crate) struct RootProcess {
    child: KillOnDrop,
    log: PathBuf,
}

impl RootProcess {
    /// Starts `argv` in `root` as `name` (its output in `dir/NAME.log`, at `rust_log`).
    pub(crate) fn start(
        root: &Path,
        dir: &Path,
        name: &str,
        argv: &[String],
        rust_log: &str,
    ) -> Result<Self, Error> {
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
            .env("RUST_LOG", rust_log)
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

    pub(crate) fn wait_for(&mut self, socket: &Path) -> Result<(), Error> {
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

/// kmscube on KMS while the host looks at the scanout: it must still be running when the
/// host is asked, and it is stopped afterwards.
const KMSCUBE_HOLD: &str = r#"#!/bin/sh
# kmscube stops at the first byte on stdin ("user interrupted!"): give it a pipe that
# stays open and empty.
mkfifo /tmp/kmscube.in
kmscube <>/tmp/kmscube.in > /tmp/kmscube.log 2>&1 &
pid=$!
sleep 10
if ! kill -0 $pid 2>/dev/null; then
  tail -5 /tmp/kmscube.log | sed 's/^/  kmscube: /'
  echo "FAILED kmscube: exited before the host looked"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
echo "@@VMLANE hold kmscube"; read -r _
kill $pid; wait $pid 2>/dev/null
grep -i -E "renderer|version" /tmp/kmscube.log | head -3 | sed 's/^/  kmscube: /'
echo "ok kmscube: on screen while the host captured the scanout"
echo "1 passed, 0 failed, 0 skipped"
"#;

/// Guest-side checks that need no GPU work beyond start-up, for the run with a refusing
/// policy: the GL and Vulkan drivers still come up.
const CHECK_DEVICES: &str = r#"#!/bin/sh
pass=0; fail=0
ok() { echo "ok $1"; pass=$((pass+1)); }
bad() { echo "FAILED $1: $2"; fail=$((fail+1)); }
info=$(eglinfo -B -p gbm 2>&1)
if echo "$info" | grep -q "OpenGL.*renderer.*virgl"; then ok "eglinfo: still virgl after the refusal"
else echo "$info" | tail -5 | sed 's/^/  eglinfo: /'; bad "eglinfo" "no virgl renderer"; fi
out=$(timeout 120 vulkaninfo --summary 2>&1)
if echo "$out" | grep -q "deviceName.*Venus"; then ok "vulkaninfo: the venus device is still there"
else bad "vulkaninfo" "no venus device"; fi
echo "$pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
"#;

/// One guest boot of the lane.
pub(crate) struct GuestRun<'a> {
    pub(crate) label: &'a str,
    pub(crate) qemu: Qemu,
    pub(crate) extra: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) steps: Vec<(&'a str, &'a str)>,
    /// More scripts for `/lane/` (name, text).
    pub(crate) files: Vec<(&'a str, &'a str)>,
}

pub(crate) fn guest_run(
    env: &mut Env,
    dir: &Path,
    image: &rootfs::Image,
    vk_hostmem: &Path,
    run: GuestRun<'_>,
    timeout: Duration,
    on_hold: &mut crate::vm::HoldHandler<'_>,
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
            ("check-devices", 0o755, CHECK_DEVICES.as_bytes().to_vec()),
            ("kmscube-hold", 0o755, KMSCUBE_HOLD.as_bytes().to_vec()),
            ("vk-hostmem", 0o755, vk),
        ],
    };
    let mut files = files;
    for (name, text) in &run.files {
        files.files.push((name, 0o755, text.as_bytes().to_vec()));
    }
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
        boot.run(on_hold)
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

/// A policy that refuses lavapipe's memory (the memfds it names "llvmpipe memory fd", which
/// venus's HOST_VISIBLE allocations are on this host) for guest mapping, as if it needed
/// `DMA_BUF_IOCTL_SYNC`; venus's own shared memory (its ring, other memfd names) stays
/// mappable, so the guest's `vkMapMemory` is what fails.
const REFUSING_POLICY: &str = "\
[[exporter]]
name = \"memfd:llvmpipe*\"
needs_sync = \"yes\"
note = \"render lane: refuse lavapipe memory to show the guest's vkMapMemory failing\"
";

/// Venus's fence, semaphore and event feedback lives in a HOST_VISIBLE buffer it maps at
/// device creation: under the refusing policy that buffer is refused too, so the refusal
/// run turns feedback off (Mesa's `VN_PERF`) to reach the application's own mapping.
const NO_FEEDBACK: &str = "VN_PERF=no_fence_feedback,no_semaphore_feedback,no_event_feedback";

/// Our backend in the render root: virglrenderer 1.1 (virgl and venus) on llvmpipe and
/// lavapipe.
pub(crate) struct Ours {
    pub(crate) binary: PathBuf,
    /// `RUST_LOG` of its log: `debug` in the lane (the log is evidence), `warn` for the
    /// benchmark (logging every command is a cost of its own).
    pub(crate) rust_log: &'static str,
}

impl Ours {
    /// Starts our backend in the render root with `extra` arguments, in `dir`.
    pub(crate) fn start(
        &self,
        root: &Path,
        dir: &Path,
        extra: &[String],
    ) -> Result<(RootProcess, PathBuf), Error> {
        // The lane directory is bind-mounted at the same path in the root: the binary and
        // the socket are seen from both sides.
        let binary = dir.join("vhost-user-gpu");
        fs::copy(&self.binary, &binary).map_err(|e| Error::io(&self.binary, e))?;
        let socket = dir.join("gpu.sock");
        let _ = fs::remove_file(&socket);
        let mut argv = vec![
            binary.display().to_string(),
            "--socket-path".into(),
            socket.display().to_string(),
        ];
        argv.extend(extra.iter().cloned());
        let mut backend = RootProcess::start(root, dir, "vhost-user-gpu", &argv, self.rust_log)?;
        backend.wait_for(&socket)?;
        Ok((backend, socket))
    }
}

/// What the lane and the benchmark (`render_bench.rs`) both start from.
pub(crate) struct Setup {
    /// The download and build cache.
    pub cache: PathBuf,
    /// QEMU 10 (bookworm-backports).
    pub qemu10: PathBuf,
    /// The guest's trixie image.
    pub image: rootfs::Image,
    /// The render root (QEMU 11.1, virglrenderer, Mesa).
    pub render: RenderRoot,
    /// vk-hostmem, built for the guest image.
    pub vk_hostmem: PathBuf,
    /// Our backend, logging at `rust_log`.
    pub ours: Ours,
}

impl Setup {
    /// Fetches and builds what is missing.
    pub(crate) fn prepare(env: &mut Env, rust_log: &'static str) -> Result<Setup, Error> {
        let cache = env.cache()?;
        let qemu10 = fetch::qemu10(env.apt()?)?;
        let image = rootfs::image(&cache, &Spec::render())?;
        let render = render_root(&cache)?;
        let built = step("build: vk-hostmem (dynamic, for the guest image)", || {
            binaries::host(&["build", "-p", "guest-tests", "--bin", "vk-hostmem"])
        })?;
        let vk_hostmem = binaries::find(&built, "vk-hostmem", false)?.path.clone();
        let ours = Ours {
            binary: crate::lanes::host_backend()?,
            rust_log,
        };
        Ok(Setup {
            cache,
            qemu10,
            image,
            render,
            vk_hostmem,
            ours,
        })
    }
}

/// Runs the lane with our backend: behind QEMU 11.1's generic vhost-user device (virgl and
/// venus with blobs mapped into the host-visible region), the same with a policy that
/// refuses the mapping, and behind QEMU 10's vhost-user-gpu-pci (virgl without blobs).
pub fn lane(env: &mut Env, timeout: Duration) -> Result<Tally, Error> {
    let Setup {
        cache: _,
        qemu10,
        image,
        render,
        vk_hostmem,
        ours,
    } = Setup::prepare(env, "debug")?;
    let mut tally = Tally::default();

    // 1. QEMU 11.1, blobs and the host-visible region: virgl, venus, HOST_VISIBLE memory.
    let dir = crate::lanes::lane_dir("render/ours-qemu11")?;
    let captures = dir.join("captures");
    fs::create_dir_all(&captures).map_err(|e| Error::io(&captures, e))?;
    let (mut backend, socket) = ours.start(
        &render.root,
        &dir,
        &strings(&["--capture-dir", &captures.display().to_string()]),
    )?;
    let mut cube = None;
    let extra = crate::lanes::vhost_user_gpu_args(&socket, crate::lanes::QEMU11_GPU_DEVICE);
    tally.add(guest_run(
        env,
        &dir,
        &image,
        &vk_hostmem,
        GuestRun {
            label: "ours-qemu11",
            qemu: Qemu::Chroot(render.root.clone()),
            extra,
            env: Vec::new(),
            files: Vec::new(),
            steps: vec![
                ("virgl", "/lane/check-virgl"),
                ("kmscube-scanout", "/lane/kmscube-hold"),
                ("vulkan", "/lane/check-vulkan Venus"),
                (
                    "host-visible",
                    "/lane/vk-hostmem --device Venus --size 33554432 --bench",
                ),
            ],
        },
        timeout,
        &mut |what| {
            if what.starts_with("kmscube") {
                let kept = dir.join("kmscube.png");
                cube = Some(crate::lanes::poll_outcome(
                    Duration::from_secs(10),
                    || match fs::copy(captures.join("scanout-0.png"), &kept) {
                        Ok(_) => check_cube_png(&kept),
                        Err(e) => Outcome::Failed(format!("no scanout-0.png: {e}")),
                    },
                ));
            }
            HoldReply::Continue
        },
    )?);
    host_case(
        &mut tally,
        "render/ours-qemu11/host: the backend's capture shows kmscube's cube",
        cube.unwrap_or(Outcome::Failed(
            "the guest never asked for the capture".into(),
        )),
    );
    host_case(
        &mut tally,
        "render/ours-qemu11/host: backend survived the guest",
        match backend.crashed() {
            Some(why) => Outcome::Failed(why),
            None => Outcome::Passed,
        },
    );
    // The default sandbox (--sandbox on) and renderer isolation (process): the render
    // worker rendered under the 3D profile, the backend kept the minimal one.
    let log = fs::read_to_string(&backend.log).unwrap_or_default();
    host_case(
        &mut tally,
        "render/ours-qemu11/host: the render worker rendered under the 3D sandbox profile, the backend kept the minimal one",
        if log.contains("render worker: sandbox: 3D (renderer) profile")
            && log.contains("] sandbox: minimal (no 3D) profile")
            && log.contains("Landlock fully enforced")
        {
            Outcome::Passed
        } else {
            Outcome::Failed(format!(
                "no render worker under the 3D profile with Landlock, or no minimal profile \
                 of the backend, in {}",
                backend.log.display()
            ))
        },
    );
    drop(backend);

    // 2. The same with a policy that refuses the renderer's memory for guest mapping.
    let map_refused =
        format!("env {NO_FEEDBACK} /lane/vk-hostmem --device Venus --expect-map-failure");
    let dir = crate::lanes::lane_dir("render/ours-refusing")?;
    let policy = dir.join("refuse.toml");
    fs::write(&policy, REFUSING_POLICY).map_err(|e| Error::io(&policy, e))?;
    let (mut backend, socket) = ours.start(
        &render.root,
        &dir,
        &strings(&["--policy-config", &policy.display().to_string()]),
    )?;
    let extra = crate::lanes::vhost_user_gpu_args(&socket, crate::lanes::QEMU11_GPU_DEVICE);
    tally.add(guest_run(
        env,
        &dir,
        &image,
        &vk_hostmem,
        GuestRun {
            label: "ours-refusing",
            qemu: Qemu::Chroot(render.root.clone()),
            extra,
            env: Vec::new(),
            files: Vec::new(),
            steps: vec![
                ("map-refused", &map_refused),
                ("still-serving", "/lane/check-devices"),
            ],
        },
        timeout,
        &mut |_| HoldReply::Continue,
    )?);
    let log = fs::read_to_string(&backend.log).unwrap_or_default();
    host_case(
        &mut tally,
        "render/ours-refusing/host: the backend logged the refusal",
        if log.contains("refused for guest mapping") {
            Outcome::Passed
        } else {
            Outcome::Failed(format!("no refusal in {}", backend.log.display()))
        },
    );
    host_case(
        &mut tally,
        "render/ours-refusing/host: backend survived the guest",
        match backend.crashed() {
            Some(why) => Outcome::Failed(why),
            None => Outcome::Passed,
        },
    );
    drop(backend);

    // 3. QEMU 10's vhost-user-gpu-pci: virgl without blobs, shown through QEMU's display.
    let dir = crate::lanes::lane_dir("render/ours-qemu10")?;
    let (mut backend, socket) = ours.start(&render.root, &dir, &[])?;
    let qmp_socket = dir.join("qmp.sock");
    let mut extra = crate::lanes::vhost_user_gpu_args(&socket, crate::lanes::QEMU10_GPU_DEVICE);
    extra.extend([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_socket.display()),
    ]);
    let mut cube = None;
    tally.add(guest_run(
        env,
        &dir,
        &image,
        &vk_hostmem,
        GuestRun {
            label: "ours-qemu10",
            qemu: Qemu::System(qemu10.clone()),
            extra,
            env: Vec::new(),
            files: Vec::new(),
            steps: vec![
                ("virgl", "/lane/check-virgl"),
                ("kmscube-scanout", "/lane/kmscube-hold"),
                ("vulkan", "/lane/check-vulkan"),
            ],
        },
        timeout,
        &mut |what| {
            if what.starts_with("kmscube") {
                let file = dir.join("screendump-kmscube.png");
                cube =
                    Some(crate::lanes::poll_outcome(
                        Duration::from_secs(10),
                        || match Qmp::connect(&qmp_socket).and_then(|mut q| q.screendump_png(&file))
                        {
                            Err(e) => Outcome::Failed(format!("QMP screendump: {e}")),
                            Ok(()) => check_cube_png(&file),
                        },
                    ));
            }
            HoldReply::Continue
        },
    )?);
    host_case(
        &mut tally,
        "render/ours-qemu10/host: QEMU's screendump shows kmscube's cube",
        cube.unwrap_or(Outcome::Failed(
            "the guest never asked for the screendump".into(),
        )),
    );
    host_case(
        &mut tally,
        "render/ours-qemu10/host: backend survived the guest",
        match backend.crashed() {
            Some(why) => Outcome::Failed(why),
            None => Outcome::Passed,
        },
    );
    drop(backend);
    Ok(tally)
}

/// Checks that a screenshot shows kmscube's cube: a background of one grey and, around the
/// middle of the screen, a large area of saturated colours of several hues (the cube's
/// faces), not a console, a black screen or a single colour.
fn check_cube_png(path: &Path) -> Outcome {
    let image = match pattern::read_png(path) {
        Ok(i) => i,
        Err(e) => return Outcome::Failed(format!("{}: {e}", path.display())),
    };
    match cube_shown(&image) {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(format!("{}: {e}", path.display())),
    }
}

/// The cube test on a decoded image (see [`check_cube_png`]).
fn cube_shown(image: &pattern::Image) -> Result<(), String> {
    let total = image.pixels.len().max(1);
    let channels = |p: u32| [(p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff];
    let saturated = |p: u32| {
        let c = channels(p);
        c.iter().max().unwrap_or(&0) - c.iter().min().unwrap_or(&0) >= 64
    };
    let (mut count, mut sx, mut sy) = (0usize, 0u64, 0u64);
    let mut hues = [0usize; 3];
    for (i, &p) in image.pixels.iter().enumerate() {
        if saturated(p) {
            count += 1;
            sx += (i % image.width as usize) as u64;
            sy += (i / image.width as usize) as u64;
            let c = channels(p);
            let dominant = (0..3).max_by_key(|&k| c[k]).unwrap_or(0);
            hues[dominant] += 1;
        }
    }
    if count * 100 < total * 2 {
        return Err(format!(
            "only {count} of {total} pixels are coloured: no cube on the screen"
        ));
    }
    let (cx, cy) = (sx / count as u64, sy / count as u64);
    let (w, h) = (u64::from(image.width), u64::from(image.height));
    if cx < w / 4 || cx > w * 3 / 4 || cy < h / 4 || cy > h * 3 / 4 {
        return Err(format!(
            "the coloured area is centred at ({cx},{cy}), not around the middle of {w}x{h}"
        ));
    }
    if hues.iter().filter(|&&n| n * 20 >= count).count() < 2 {
        return Err(format!(
            "the coloured area has one hue (red/green/blue-dominant pixels {hues:?}): not the cube's faces"
        ));
    }
    Ok(())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
