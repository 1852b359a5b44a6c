//! `vug-bench`: the backend against its peers and against the physical floor, in one run.
//!
//! ```text
//! cargo run --release -p vug-bench -- [--json] [--quick] [--out DIR]
//!     [--backend PATH] [--no-install]
//! ```
//!
//! Five measurements, all through the conformance suite's vhost-user frontend
//! (`vug-conformance`, real sockets, real backend processes):
//! 1. MAP_BLOB + UNMAP_BLOB of a 1 MiB HOST3D blob (SHMEM_MAP/UNMAP with REPLY_ACK): p50, p99,
//!    pairs/s, against the floor: the same backend-request round trips and mmaps from a
//!    process without device logic;
//! 2. 2D command cycles/s against QEMU's backend; GET_DISPLAY_INFO pairs/s at queue depth 1
//!    and 64 against QEMU's backend and vhost-device-gpu 0.2.0, ours without a display channel
//!    (like for like with vhost-device-gpu's null mode; the target) and with QEMU's;
//! 3. TRANSFER_TO_HOST_2D GiB/s from scattered 4 KiB pages against a plain copy;
//! 4. dmabuf-info first and repeated inspect;
//! 5. backend RSS idle and with 10,000 small resources.
//!
//! Figures are printed (a Markdown table, or JSON with `--json`), written to
//! `DIR/results.json`, and the map latency distribution is drawn to `DIR/map-latency.png`.
//! Nothing here asserts a timing: targets are reported as met or not.

mod host;
mod map;
mod peers;
mod plot;
mod queue;
mod report;
mod sys;
mod upgrade;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use serde_json::json;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vug_conformance::display::DisplayConfig;
use vug_conformance::frontend::FrontendOptions;
use vug_conformance::{BackendSpec, Frontend, Peer};

use crate::peers::PeerState;
use crate::queue::DisplayAnswer;
use crate::report::{Better, Figure, Samples};

/// Errors of the bench (printed, then exit status 1; usage errors exit 2 through clap).
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "vug-bench",
    about = "Benchmarks vhost-user-gpu against QEMU's backend, vhost-device-gpu and the floor"
)]
struct Cli {
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Few iterations (a smoke run for CI: checks that everything runs, not the figures);
    /// does not build vhost-device-gpu when it is not installed yet.
    #[arg(long)]
    quick: bool,
    /// Where results.json and map-latency.png go (default: <target dir>/vug-bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Our backend program (default: vhost-user-gpu next to this program, rebuilt first).
    #[arg(long, value_name = "PATH")]
    backend: Option<PathBuf>,
    /// Never install missing peers (report them as not installed).
    #[arg(long)]
    no_install: bool,
    /// Run only these sections (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = SECTIONS)]
    only: Option<Vec<String>>,
    /// Internal: the floor's backend side (FD PAIRS).
    #[arg(long, num_args = 2, value_names = ["FD", "PAIRS"], hide = true)]
    floor_child: Option<Vec<usize>>,
}

/// Iteration counts.
struct Plan {
    map_pairs: usize,
    cycles: usize,
    display_pairs: usize,
    frames: usize,
    inspect_rounds: usize,
    inspect_repeats: usize,
    resources: usize,
    /// Rounds the backends take turns in (each keeps its best).
    rounds: usize,
    /// Rounds of the map measurement (ours, ours without memory-table re-send, floor).
    map_rounds: usize,
    /// Live upgrades in a row (blackout measurement).
    upgrades: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                map_pairs: 200,
                cycles: 200,
                display_pairs: 1000,
                frames: 10,
                inspect_rounds: 20,
                inspect_repeats: 10_000,
                resources: 10_000,
                rounds: 1,
                map_rounds: 2,
                upgrades: 10,
            }
        } else {
            Plan {
                map_pairs: 10_000,
                cycles: 2000,
                display_pairs: 20_000,
                frames: 30,
                inspect_rounds: 200,
                inspect_repeats: 1_000_000,
                resources: 10_000,
                rounds: 5,
                map_rounds: 10,
                upgrades: 100,
            }
        }
    }
}

fn ours_spec(program: &std::path::Path) -> BackendSpec {
    BackendSpec::new(program, Peer::Ours).with_args([
        "--allocator",
        "memfd",
        "--max-resources",
        "20000",
        "--hostmem",
        "256M",
    ])
}

fn peer_spec(program: &std::path::Path, peer: Peer) -> BackendSpec {
    BackendSpec::new(program, peer)
}

fn spawn(spec: BackendSpec) -> Res<Frontend> {
    Ok(Frontend::spawn_with(spec, FrontendOptions::default())?)
}

fn progress(what: &str) {
    eprintln!("vug-bench: {what}");
}

fn main() {
    let cli = Cli::parse();
    if let Some(args) = &cli.floor_child {
        if let Err(e) = map::floor_child(args[0] as i32, args[1]) {
            eprintln!("vug-bench floor child: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run(&cli) {
        eprintln!("vug-bench: {e}");
        std::process::exit(1);
    }
}

fn default_out() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|t| t.join("vug-bench")))
        .unwrap_or_else(|| PathBuf::from("vug-bench-out"))
}

/// Everything the sections share.
struct Session<'a> {
    plan: Plan,
    ours: PathBuf,
    qemu: &'a PeerState,
    vdg: &'a PeerState,
    out_dir: PathBuf,
}

/// The sections `--only` can pick.
const SECTIONS: [&str; 6] = ["map", "queue", "transfer", "inspect", "memory", "upgrade"];

fn run(cli: &Cli) -> Res<()> {
    let started = Instant::now();
    let load_before = host::load_average();
    // Backend logs at warn: the conformance frontend turns on debug logging otherwise, which
    // would be measured too.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    // Usage errors (an unknown section...) were reported by clap (exit status 2).
    let only: Vec<&str> = cli.only.as_ref().map_or_else(
        || SECTIONS.to_vec(),
        |list| list.iter().map(String::as_str).collect(),
    );
    let out_dir = cli.out.clone().unwrap_or_else(default_out);
    std::fs::create_dir_all(&out_dir)?;

    let ours = peers::ours(cli.backend.clone())?;
    let may_install = !cli.no_install;
    let needs_peers = only.iter().any(|s| ["queue", "memory"].contains(s));
    let (qemu, qemu_install) = if needs_peers {
        peers::qemu(may_install)
    } else {
        (PeerState::Missing("not needed (--only)".into()), None)
    };
    let (vdg, vdg_install) = if only.contains(&"queue") {
        peers::vhost_device_gpu(may_install && !cli.quick)
    } else {
        (PeerState::Missing("not needed (--only)".into()), None)
    };
    for (name, state) in [("QEMU vhost-user-gpu", &qemu), ("vhost-device-gpu", &vdg)] {
        match state {
            PeerState::Found(p) => progress(&format!("peer {name}: {}", p.display())),
            PeerState::Missing(why) => progress(&format!("peer {name}: {why}")),
        }
    }
    let session = Session {
        plan: Plan::new(cli.quick),
        ours: ours.clone(),
        qemu: &qemu,
        vdg: &vdg,
        out_dir: out_dir.clone(),
    };
    let mut figures = Vec::new();
    let mut plot_path = None;
    for section in &only {
        match *section {
            "map" => plot_path = Some(section_map(&session, &mut figures)?),
            "queue" => section_queue(&session, &mut figures)?,
            "transfer" => section_transfer(&session, &mut figures)?,
            "inspect" => section_inspect(&session, &mut figures)?,
            "upgrade" => section_upgrade(&session, &mut figures)?,
            _ => section_memory(&session, &mut figures)?,
        }
    }

    let elapsed = started.elapsed().as_secs_f64();
    let load = (load_before, host::load_average());
    let peer_json = |s: &PeerState, install: Option<f64>| match s {
        PeerState::Found(p) => {
            json!({"path": p.display().to_string(), "installed_now_seconds": install})
        }
        PeerState::Missing(w) => json!({"missing": w}),
    };
    let doc = json!({
        "machine": host::machine(),
        "quick": cli.quick,
        "load_average": {"start": load.0, "end": load.1, "cores": std::thread::available_parallelism().map_or(0, |n| n.get())},
        "seconds": elapsed,
        "backend": ours.display().to_string(),
        "peers": {
            "qemu": peer_json(&qemu, qemu_install),
            "vhost-device-gpu": peer_json(&vdg, vdg_install),
        },
        "figures": figures,
        "plot": plot_path.as_ref().map(|p| p.display().to_string()),
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(out_dir.join("results.json"), format!("{text}\n"))?;
    if cli.json {
        println!("{text}");
    } else {
        println!(
            "vug-bench{}: {}",
            if cli.quick { " --quick" } else { "" },
            host::machine()
        );
        for (name, s) in [
            ("QEMU vhost-user-gpu", &qemu),
            ("vhost-device-gpu 0.2.0", &vdg),
        ] {
            match s {
                PeerState::Found(p) => println!("peer {name}: {}", p.display()),
                PeerState::Missing(w) => println!("peer {name}: {w}"),
            }
        }
        println!();
        print!("{}", report::table(&figures));
        println!();
        println!(
            "ratio = ours / compared-with; for us, ns, KiB and B lower is better, for rates \
             higher is better."
        );
        if let Some(p) = &plot_path {
            println!("plot: {}", p.display());
        }
        println!("json: {}", out_dir.join("results.json").display());
        println!(
            "total {elapsed:.0} s; load average {:.1} at the start, {:.1} at the end (other work \
             on the machine lowers the wall-clock figures)",
            load.0, load.1
        );
    }
    Ok(())
}

/// (1) Map round trip, ours and the floor; draws the plot, returns its path.
fn section_map(session: &Session<'_>, figures: &mut Vec<Figure>) -> Res<PathBuf> {
    // Ours with QEMU's memory updates (one ADD_MEM_REG/REM_MEM_REG per change when
    // CONFIGURE_MEM_SLOTS is negotiated, as QEMU does with our backend), ours with a frontend
    // re-sending its whole table (QEMU's behaviour without that feature), ours with no memory
    // updates at all, and the floor take turns.
    let slots_options = FrontendOptions {
        configure_mem_slots: true,
        ..FrontendOptions::default()
    };
    let mut fe = Frontend::spawn_with(ours_spec(&session.ours), slots_options)?;
    if !fe
        .protocol_features()
        .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    {
        progress(
            "warning: this backend does not offer CONFIGURE_MEM_SLOTS; the main map rows \
             measure whole memory tables",
        );
    }
    let blob = map::setup_host_blob(&mut fe)?;
    let table_options = FrontendOptions {
        configure_mem_slots: false,
        ..FrontendOptions::default()
    };
    let mut table_fe = Frontend::spawn_with(ours_spec(&session.ours), table_options)?;
    let table_blob = map::setup_host_blob(&mut table_fe)?;
    let options = FrontendOptions {
        memtable_follows_mappings: false,
        ..FrontendOptions::default()
    };
    let mut bare_fe = Frontend::spawn_with(ours_spec(&session.ours), options)?;
    let bare_blob = map::setup_host_blob(&mut bare_fe)?;
    let rounds = session.plan.map_rounds;
    let per_round = session.plan.map_pairs.div_ceil(rounds);
    let (mut ours_map, mut ours_table, mut ours_bare, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        progress(&format!(
            "map round trip: ours (memory slots), ours (whole tables), ours without memory \
             updates, floor; round {}/{rounds}",
            round + 1,
        ));
        ours_map.push(map::measure_ours(&mut fe, blob, per_round)?);
        ours_table.push(map::measure_ours(&mut table_fe, table_blob, per_round)?);
        ours_bare.push(map::measure_ours(&mut bare_fe, bare_blob, per_round)?);
        floor.push(map::measure_floor(per_round)?);
    }
    drop(fe);
    drop(table_fe);
    drop(bare_fe);
    // Figures: each side's best round (load elsewhere on the machine only ever adds).
    let best = |rounds: &[Samples], q: f64| {
        rounds
            .iter()
            .map(|s| s.quantile_us(q))
            .fold(f64::INFINITY, f64::min)
    };
    let best_rate = |rounds: &[Samples]| rounds.iter().map(Samples::per_second).fold(0.0, f64::max);
    figures.push(
        Figure::new(
            "map.p50",
            "MAP_BLOB+UNMAP_BLOB 1 MiB HOST3D, p50",
            best(&ours_map, 0.5),
            "us",
            Better::Lower,
        )
        .against("floor", best(&floor, 0.5))
        .ratio_target(2.0),
    );
    figures.push(
        Figure::new(
            "map.p99",
            "MAP_BLOB+UNMAP_BLOB 1 MiB HOST3D, p99",
            best(&ours_map, 0.99),
            "us",
            Better::Lower,
        )
        .against("floor", best(&floor, 0.99)),
    );
    figures.push(
        Figure::new(
            "map.p50_full_table",
            "  same, p50, frontend re-sending its whole memory table (no CONFIGURE_MEM_SLOTS)",
            best(&ours_table, 0.5),
            "us",
            Better::Lower,
        )
        .against("floor", best(&floor, 0.5)),
    );
    figures.push(
        Figure::new(
            "map.p99_full_table",
            "  same, p99, frontend re-sending its whole memory table (no CONFIGURE_MEM_SLOTS)",
            best(&ours_table, 0.99),
            "us",
            Better::Lower,
        )
        .against("floor", best(&floor, 0.99)),
    );
    figures.push(
        Figure::new(
            "map.p50_no_memtable",
            "  same, p50, frontend sending no memory update after each map",
            best(&ours_bare, 0.5),
            "us",
            Better::Lower,
        )
        .against("floor", best(&floor, 0.5)),
    );
    figures.push(
        Figure::new(
            "map.p99_no_memtable",
            "  same, p99, frontend sending no memory update after each map",
            best(&ours_bare, 0.99),
            "us",
            Better::Lower,
        )
        .against("floor", best(&floor, 0.99)),
    );
    figures.push(
        Figure::new(
            "map.rate",
            "MAP_BLOB+UNMAP_BLOB pairs per second",
            best_rate(&ours_map),
            "pairs/s",
            Better::Higher,
        )
        .against("floor", best_rate(&floor)),
    );
    // The plot: every sample of every round.
    let (ours_map, ours_table, ours_bare, floor) = (
        Samples::merge(ours_map),
        Samples::merge(ours_table),
        Samples::merge(ours_bare),
        Samples::merge(floor),
    );
    let plot_path = session.out_dir.join("map-latency.png");
    plot::write_cdf(
        &plot_path,
        "MAP+UNMAP BLOB (1 MIB HOST3D) VS FLOOR",
        &[
            plot::Series {
                name: "OURS, MEMORY SLOTS (AS QEMU)",
                colour: [31, 119, 180],
                samples: &ours_map,
            },
            plot::Series {
                name: "OURS, WHOLE MEMORY TABLES",
                colour: [214, 39, 40],
                samples: &ours_table,
            },
            plot::Series {
                name: "OURS, NO MEMORY UPDATES",
                colour: [44, 160, 44],
                samples: &ours_bare,
            },
            plot::Series {
                name: "FLOOR (SHMEM REQ+MMAP)",
                colour: [255, 127, 14],
                samples: &floor,
            },
        ],
    )?;
    Ok(plot_path)
}

fn missing(state: &PeerState, name: &str) -> String {
    match state {
        PeerState::Missing(w) => format!("{name} {w}"),
        PeerState::Found(p) => format!("{name} at {}", p.display()),
    }
}

/// Best-of-rounds rates of one backend in the queue section.
#[derive(Default, Clone, Copy)]
struct QueueRates {
    cycles: f64,
    /// Backend CPU time per 2D cycle (ns), lowest round.
    cpu_per_cycle: f64,
    d1: f64,
    d64: f64,
}

/// One backend of the queue section: its frontend (or why there is none) and its best rates.
struct QueueRun {
    name: &'static str,
    fe: Result<Frontend, String>,
    rates: QueueRates,
    /// Only GET_DISPLAY_INFO is measured (no 2D cycles): vhost-device-gpu's null mode, which
    /// creates nothing, and ours without a display channel.
    transport_only: bool,
    /// What every GET_DISPLAY_INFO answer must be.
    want: DisplayAnswer,
}

/// The scanout-0 mode the conformance frontend's display reports (QEMU's display channel).
fn display_mode() -> DisplayAnswer {
    let (w, h) = DisplayConfig::default()
        .outputs
        .first()
        .copied()
        .unwrap_or((1024, 768));
    DisplayAnswer::Mode(w, h)
}

/// The mode ours is configured with in the no-display run (`--resolution`), which it must
/// answer with when there is no display to ask.
const OURS_RESOLUTION: (u32, u32) = (1280, 800);

/// (2) 2D cycles against QEMU; GET_DISPLAY_INFO at depth 1 and 64 against both peers, for ours
/// with QEMU's display channel (QEMU 10's vhost-user-gpu-pci) and without one (QEMU 11.1's
/// generic vhost-user-test-device-pci, crosvm). The backends take turns, round after round,
/// and each keeps its best round, so that load from elsewhere on the machine hits all of them
/// alike.
fn section_queue(session: &Session<'_>, figures: &mut Vec<Figure>) -> Res<()> {
    let plan = &session.plan;
    let mut runs = vec![QueueRun {
        name: "ours",
        fe: Ok(spawn(ours_spec(&session.ours))?),
        rates: QueueRates::default(),
        transport_only: false,
        // QEMU's display answers, and its modes win.
        want: display_mode(),
    }];
    for (name, state, peer) in [
        ("qemu", session.qemu, Peer::Qemu),
        ("vhost-device-gpu", session.vdg, Peer::VhostDeviceGpu),
    ] {
        let fe = match state.path() {
            Some(p) => spawn(peer_spec(p, peer)).map_err(|e| format!("{name} did not start: {e}")),
            None => Err(missing(state, name)),
        };
        let null_mode = peer == Peer::VhostDeviceGpu;
        runs.push(QueueRun {
            name,
            fe,
            rates: QueueRates::default(),
            transport_only: null_mode,
            want: if null_mode {
                DisplayAnswer::Any
            } else {
                display_mode()
            },
        });
    }
    // Ours with no display channel: answers from its configured modes.
    let (w, h) = OURS_RESOLUTION;
    let no_display = FrontendOptions {
        display_channel: false,
        ..FrontendOptions::default()
    };
    let spec = ours_spec(&session.ours).with_args(["--resolution".to_string(), format!("{w}x{h}")]);
    runs.push(QueueRun {
        name: "ours, no display channel",
        fe: Ok(Frontend::spawn_with(spec, no_display)?),
        rates: QueueRates::default(),
        transport_only: true,
        want: DisplayAnswer::Mode(w, h),
    });
    for round in 0..plan.rounds {
        for run in runs.iter_mut() {
            let Ok(fe) = run.fe.as_mut() else { continue };
            progress(&format!(
                "{}, {}, round {}/{}",
                if run.transport_only {
                    "GET_DISPLAY_INFO"
                } else {
                    "2D cycles and GET_DISPLAY_INFO"
                },
                run.name,
                round + 1,
                plan.rounds
            ));
            let r = (|| -> Res<QueueRates> {
                let pid = fe.backend_pid().ok_or("no backend pid")?;
                let cpu_before = host::cpu_ns(pid)?;
                let cycles = if run.transport_only {
                    0.0
                } else {
                    queue::two_d_cycles(fe, plan.cycles)?
                };
                let cpu = (host::cpu_ns(pid)? - cpu_before) as f64;
                let warmup = (plan.cycles / 10).max(10);
                let cpu_per_cycle = cpu / (plan.cycles + warmup) as f64;
                Ok(QueueRates {
                    cycles,
                    cpu_per_cycle,
                    d1: queue::display_info_rate(fe, 1, plan.display_pairs, run.want)?,
                    d64: queue::display_info_rate(fe, 64, plan.display_pairs, run.want)?,
                })
            })();
            match r {
                Ok(r) => {
                    run.rates.cycles = run.rates.cycles.max(r.cycles);
                    run.rates.cpu_per_cycle = if round == 0 {
                        r.cpu_per_cycle
                    } else {
                        run.rates.cpu_per_cycle.min(r.cpu_per_cycle)
                    };
                    run.rates.d1 = run.rates.d1.max(r.d1);
                    run.rates.d64 = run.rates.d64.max(r.d64);
                }
                Err(e) if run.name.starts_with("ours") => {
                    return Err(format!("{}: {e}", run.name).into())
                }
                Err(e) => run.fe = Err(format!("{} run failed: {e}", run.name)),
            }
        }
    }
    let ours = runs[0].rates;
    let ours_bare = runs[3].rates;
    let peers = &runs[1..3];
    let cycles = Figure::new(
        "2d.cycles",
        "2D cycles (CREATE_2D 64x64+ATTACH+TRANSFER+FLUSH+UNREF), depth 1",
        ours.cycles,
        "cycles/s",
        Better::Higher,
    );
    figures.push(match &peers[0].fe {
        Ok(_) => cycles
            .against("qemu", peers[0].rates.cycles)
            .ratio_target(1.5),
        Err(why) => cycles.note(why.clone()),
    });
    let cpu = Figure::new(
        "2d.cpu_per_cycle",
        "  backend CPU time per 2D cycle (all its threads)",
        ours.cpu_per_cycle / 1000.0,
        "us",
        Better::Lower,
    );
    figures.push(match &peers[0].fe {
        Ok(_) => cpu.against("qemu", peers[0].rates.cpu_per_cycle / 1000.0),
        Err(why) => cpu.note(why.clone()),
    });
    for depth in [1usize, 64] {
        let pick = |r: &QueueRates| if depth == 1 { r.d1 } else { r.d64 };
        let fastest = peers
            .iter()
            .filter(|r| r.fe.is_ok())
            .max_by(|a, b| pick(&a.rates).total_cmp(&pick(&b.rates)))
            .map(|r| r.name);
        // Like for like (the target): ours without a display channel, as vhost-device-gpu's
        // null mode has none either. QEMU's backend always has its display channel.
        for run in peers {
            let f = Figure::new(
                &format!(
                    "transport.no_display.depth{depth}.vs_{}",
                    run.name.replace('-', "_")
                ),
                &format!(
                    "GET_DISPLAY_INFO pairs/s, depth {depth}, ours without display channel, vs {}",
                    run.name
                ),
                pick(&ours_bare),
                "pairs/s",
                Better::Higher,
            );
            figures.push(match &run.fe {
                Ok(_) => {
                    let f = f.against(run.name, pick(&run.rates));
                    if fastest == Some(run.name) {
                        f.ratio_target(1.2).note("fastest peer")
                    } else {
                        f
                    }
                }
                Err(why) => f.note(why.clone()),
            });
        }
        // Ours with QEMU 10's display channel: one display round trip per batch (what
        // vhost-user-gpu-pci costs); no target, vhost-device-gpu's null mode never asks a
        // display.
        for run in peers {
            let f = Figure::new(
                &format!("transport.depth{depth}.vs_{}", run.name.replace('-', "_")),
                &format!(
                    "  GET_DISPLAY_INFO pairs/s, depth {depth}, ours with QEMU's display channel, vs {}",
                    run.name
                ),
                pick(&ours),
                "pairs/s",
                Better::Higher,
            );
            figures.push(match &run.fe {
                Ok(_) => f.against(run.name, pick(&run.rates)),
                Err(why) => f.note(why.clone()),
            });
        }
    }
    Ok(())
}

/// (3) TRANSFER_TO_HOST_2D bandwidth against a plain copy.
fn section_transfer(session: &Session<'_>, figures: &mut Vec<Figure>) -> Res<()> {
    progress("TRANSFER_TO_HOST_2D bandwidth");
    let mut fe = spawn(ours_spec(&session.ours))?;
    let transfer = queue::transfer(&mut fe, session.plan.frames, session.plan.rounds.max(3))?;
    figures.push(
        Figure::new(
            "transfer.rate",
            &format!(
                "TRANSFER_TO_HOST_2D 1920x1080 B8G8R8A8 from {} scattered 4 KiB pages",
                transfer.entries
            ),
            transfer.backend_gib_s,
            "GiB/s",
            Better::Higher,
        )
        .against("copy", transfer.copy_gib_s)
        .ratio_target(0.8),
    );
    Ok(())
}

/// (4) dmabuf-info.
fn section_inspect(session: &Session<'_>, figures: &mut Vec<Figure>) -> Res<()> {
    progress("dmabuf-info inspect");
    let inspect = host::inspect_cost(session.plan.inspect_rounds, session.plan.inspect_repeats)?;
    figures.push(
        Figure::new(
            "dmabuf_info.first",
            "dmabuf-info inspect, first (fresh Inspector)",
            inspect.first_ns,
            "ns",
            Better::Lower,
        )
        .note(format!("buffer: {}", inspect.buffer)),
    );
    figures.push(
        Figure::new(
            "dmabuf_info.repeated",
            "dmabuf-info inspect, repeated (same buffer)",
            inspect.repeated_ns,
            "ns",
            Better::Lower,
        )
        .value_below(1000.0),
    );
    figures.push(Figure::new(
        "dmabuf_info.decide_repeated",
        "dmabuf-info decide_fd, repeated (what MAP_BLOB calls)",
        inspect.decide_ns,
        "ns",
        Better::Lower,
    ));
    Ok(())
}

/// (5) Memory, ours and QEMU's.
fn section_memory(session: &Session<'_>, figures: &mut Vec<Figure>) -> Res<()> {
    let n = session.plan.resources;
    progress("memory: idle and with 10,000 resources");
    let (idle, full) = resident(&mut spawn(ours_spec(&session.ours))?, n)?;
    let qemu_mem = session
        .qemu
        .path()
        .map(|p| -> Res<(u64, u64)> { resident(&mut spawn(peer_spec(p, Peer::Qemu))?, n) });
    let per = |idle: u64, full: u64| full.saturating_sub(idle) as f64 / n as f64;
    let with_qemu = |f: Figure, pick: &dyn Fn(u64, u64) -> f64| match &qemu_mem {
        Some(Ok((i, f2))) => f.against("qemu", pick(*i, *f2)),
        Some(Err(e)) => f.note(format!("QEMU run failed: {e}")),
        None => f.note(missing(session.qemu, "QEMU")),
    };
    figures.push(with_qemu(
        Figure::new(
            "rss.idle",
            "backend RSS, idle (connected, no resources)",
            idle as f64 / 1024.0,
            "KiB",
            Better::Lower,
        ),
        &|i, _| i as f64 / 1024.0,
    ));
    figures.push(with_qemu(
        Figure::new(
            "rss.resources",
            &format!("backend RSS with {n} resources (16x16 + 4 KiB backing)"),
            full as f64 / 1024.0,
            "KiB",
            Better::Lower,
        ),
        &|_, f| f as f64 / 1024.0,
    ));
    figures.push(with_qemu(
        Figure::new(
            "rss.per_resource",
            "bytes per resource",
            per(idle, full),
            "B",
            Better::Lower,
        ),
        &per,
    ));
    Ok(())
}

/// (6) Live upgrade blackout, ours only (no peer can upgrade).
fn section_upgrade(session: &Session<'_>, figures: &mut Vec<Figure>) -> Res<()> {
    let n = session.plan.upgrades;
    progress(&format!("live upgrade blackout over {n} upgrades"));
    let up = upgrade::blackouts(ours_spec(&session.ours), n)?;
    let to_ms = |us: f64| us / 1000.0;
    figures.push(Figure::new(
        "upgrade.blackout_p50",
        &format!("live upgrade blackout (largest gap between completions), p50 of {n}"),
        to_ms(up.blackout.quantile_us(0.5)),
        "ms",
        Better::Lower,
    ));
    figures.push(
        Figure::new(
            "upgrade.blackout_p99",
            &format!("live upgrade blackout, p99 of {n}"),
            to_ms(up.blackout.quantile_us(0.99)),
            "ms",
            Better::Lower,
        )
        .value_below(50.0),
    );
    figures.push(Figure::new(
        "upgrade.whole_p50",
        "  whole upgrade (new process started to old process gone), p50",
        to_ms(up.whole.quantile_us(0.5)),
        "ms",
        Better::Lower,
    ));
    Ok(())
}

/// RSS of the backend after connecting (idle) and after `n` small resources were created.
fn resident(fe: &mut Frontend, n: usize) -> Res<(u64, u64)> {
    let pid = fe.backend_pid().ok_or("no backend pid")?;
    // One command so that the queue worker ran once.
    fe.ctrl(vug_conformance::gpu::get_display_info())?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let idle = host::rss_bytes(pid)?;
    queue::many_resources(fe, n, 0x10000)?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let full = host::rss_bytes(pid)?;
    Ok((idle, full))
}
