//! The C library as a distribution ships it: `scripts/install.sh` installs the library this
//! test build made (SONAME, links, `.a`, header, `dmabuf-info.pc`, man pages) into a temporary
//! prefix; `tests/c/abi_test.c` is compiled with `pkg-config --cflags --libs dmabuf-info`
//! against that layout, and run. Needs `cc`, `pkg-config`, `readelf`, `sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where cargo put this build's artifacts: the binary's directory (the libraries are there
/// after `cargo build`, in `deps/` after a test build).
fn built() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_dmabuf-info"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn install(args: &[&str]) -> String {
    let o = Command::new("sh")
        .arg(manifest().join("scripts/install.sh"))
        .arg("--from")
        .arg(built())
        .args(args)
        .output()
        .expect("run install.sh");
    ok(o, "install.sh")
}

fn pkg_config(pc_dir: &Path, args: &[&str]) -> Vec<String> {
    let o = Command::new("pkg-config")
        .args(args)
        .arg("dmabuf-info")
        .env("PKG_CONFIG_PATH", pc_dir)
        .env_remove("PKG_CONFIG_SYSROOT_DIR")
        .output()
        .expect("run pkg-config");
    ok(o, "pkg-config")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn readelf_dynamic(file: &Path) -> String {
    ok(
        Command::new("readelf")
            .arg("-d")
            .arg(file)
            .output()
            .unwrap(),
        "readelf",
    )
}

#[test]
fn c_program_builds_against_the_installed_library_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("usr");
    let prefix_s = prefix.to_str().unwrap();
    install(&["--prefix", prefix_s]);
    let libdir = prefix.join("lib");

    // The layout: real file, SONAME link, development link, static library, header, .pc, man.
    let soname = format!(
        "libdmabuf_info.so.{}",
        dmabuf_info::ffi::DMABUF_INFO_ABI_MAJOR
    );
    let real = format!("{soname}.{}.0", dmabuf_info::ffi::DMABUF_INFO_ABI_MINOR);
    assert!(libdir.join(&real).is_file());
    assert_eq!(
        std::fs::read_link(libdir.join(&soname)).unwrap(),
        Path::new(&real)
    );
    assert_eq!(
        std::fs::read_link(libdir.join("libdmabuf_info.so")).unwrap(),
        Path::new(&soname)
    );
    assert!(libdir.join("libdmabuf_info.a").is_file());
    assert!(prefix.join("include/dmabuf_info.h").is_file());
    assert!(prefix.join("bin/dmabuf-info").is_file());
    assert!(prefix.join("share/man/man1/dmabuf-info.1").is_file());
    assert!(prefix
        .join("share/man/man1/dmabuf-info-inspect.1")
        .is_file());
    assert!(prefix.join("share/dmabuf-info/quirks.d").is_dir());
    assert!(readelf_dynamic(&libdir.join(&real)).contains(&format!("Library soname: [{soname}]")));

    // pkg-config gives the installed paths.
    let pc_dir = libdir.join("pkgconfig");
    let cflags = pkg_config(&pc_dir, &["--cflags"]);
    let libs = pkg_config(&pc_dir, &["--libs"]);
    assert_eq!(cflags, [format!("-I{prefix_s}/include")]);
    assert_eq!(libs, [format!("-L{prefix_s}/lib"), "-ldmabuf_info".into()]);
    assert_eq!(
        pkg_config(&pc_dir, &["--modversion"]),
        [env!("CARGO_PKG_VERSION")]
    );

    // Build the C checks with exactly those flags, and run them with the library found the
    // way an installed one is (the loader's path), not through an rpath.
    let exe = tmp.path().join("abi_test");
    let o = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(manifest().join("tests/c/abi_test.c"))
        .args(&cflags)
        .args(&libs)
        .output()
        .expect("run cc");
    ok(o, "cc");
    assert!(
        readelf_dynamic(&exe).contains(&format!("Shared library: [{soname}]")),
        "the program must need the SONAME"
    );
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "platform = \"x86-amd\"\n").unwrap();
    let run = |exe: &Path| {
        Command::new(exe)
            .arg(&cfg)
            .env("LD_LIBRARY_PATH", &libdir)
            .env_remove("DMABUF_INFO_CONFIG")
            .env("DMABUF_INFO_QUIRKS_DIRS", "")
            .output()
            .unwrap()
    };
    assert_eq!(ok(run(&exe), "abi_test"), "ok\n");

    // The same program linked statically against libdmabuf_info.a with the .pc's
    // Libs.private: it runs without the shared library.
    let exe_static = tmp.path().join("abi_test_static");
    let static_libs = pkg_config(&pc_dir, &["--static", "--libs"]);
    let o = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe_static)
        .arg(manifest().join("tests/c/abi_test.c"))
        .args(&cflags)
        .args(static_libs.iter().map(|l| {
            if l == "-ldmabuf_info" {
                "-l:libdmabuf_info.a".to_string()
            } else {
                l.clone()
            }
        }))
        .output()
        .expect("run cc");
    ok(o, "cc (static)");
    assert!(!readelf_dynamic(&exe_static).contains("libdmabuf_info"));
    let o = Command::new(&exe_static)
        .arg(&cfg)
        .env_remove("DMABUF_INFO_CONFIG")
        .env("DMABUF_INFO_QUIRKS_DIRS", "")
        .output()
        .unwrap();
    assert_eq!(ok(o, "abi_test (static)"), "ok\n");

    // The header also compiles as C++ (extern "C").
    let o = Command::new("c++")
        .args(["-x", "c++", "-fsyntax-only", "-Wall", "-Werror"])
        .args(&cflags)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"#include <dmabuf_info.h>\nint main() { return (int)dmabuf_info_abi_version() & 0; }\n")?;
            c.wait_with_output()
        })
        .expect("run c++");
    ok(o, "c++ -fsyntax-only");
}

#[test]
fn staged_install_keeps_the_final_paths_in_the_pc_file() {
    let tmp = tempfile::tempdir().unwrap();
    let stage = tmp.path().join("stage");
    install(&[
        "--prefix",
        "/usr",
        "--libdir",
        "/usr/lib/x86_64-linux-gnu",
        "--destdir",
        stage.to_str().unwrap(),
    ]);
    let libdir = stage.join("usr/lib/x86_64-linux-gnu");
    let pc = std::fs::read_to_string(libdir.join("pkgconfig/dmabuf-info.pc")).unwrap();
    assert!(pc.contains("prefix=/usr\n"), "{pc}");
    assert!(pc.contains("libdir=/usr/lib/x86_64-linux-gnu\n"), "{pc}");
    assert!(pc.contains("includedir=/usr/include\n"), "{pc}");
    assert!(!pc.contains(stage.to_str().unwrap()), "{pc}");
    assert!(libdir.join("libdmabuf_info.so").exists());
    assert!(stage.join("usr/bin/dmabuf-info").is_file());
    assert!(stage.join("usr/share/man/man1/dmabuf-info.1").is_file());
}

#[test]
fn header_version_matches_the_library() {
    let header = std::fs::read_to_string(manifest().join("include/dmabuf_info.h")).unwrap();
    use dmabuf_info::ffi::{DMABUF_INFO_ABI_MAJOR, DMABUF_INFO_ABI_MINOR};
    let major = format!("#define DMABUF_INFO_ABI_MAJOR {DMABUF_INFO_ABI_MAJOR}");
    let minor = format!("#define DMABUF_INFO_ABI_MINOR {DMABUF_INFO_ABI_MINOR}");
    assert!(header.contains(&major), "header lacks `{major}`");
    assert!(header.contains(&minor), "header lacks `{minor}`");
    assert_eq!(
        dmabuf_info::ffi::dmabuf_info_abi_version(),
        (DMABUF_INFO_ABI_MAJOR << 16) | DMABUF_INFO_ABI_MINOR
    );
    assert_eq!(
        std::mem::size_of::<dmabuf_info::ffi::DmabufInfoResult>(),
        152
    );
    assert_eq!(
        std::mem::size_of::<dmabuf_info::ffi::DmabufInfoDecision>(),
        272
    );
}
