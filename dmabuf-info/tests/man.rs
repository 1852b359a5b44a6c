//! The man pages in `man/` are generated from the clap definitions of the command
//! (`src/bin/dmabuf-info/cli.rs`, included here) with `clap_mangen`. This test generates them
//! again and fails if a committed page differs, is missing or is left over.
//!
//! After changing the command line, regenerate them with
//! `BLESS=1 cargo test -p dmabuf-info --test man` and commit the result.

use std::path::Path;

use clap::CommandFactory;

#[allow(dead_code)] // the fields are read by the binary, not here
#[path = "../src/bin/dmabuf-info/cli.rs"]
mod cli;

#[test]
fn man_pages_match_the_command_line() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let fresh = tempfile::tempdir().unwrap();
    clap_mangen::generate_to(cli::Cli::command(), fresh.path()).unwrap();
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(&committed).unwrap();
        for name in names(&committed) {
            std::fs::remove_file(committed.join(name)).unwrap();
        }
        for name in names(fresh.path()) {
            std::fs::copy(fresh.path().join(&name), committed.join(&name)).unwrap();
        }
    }
    let want = names(fresh.path());
    assert!(want.contains(&"dmabuf-info.1".to_string()), "{want:?}");
    assert_eq!(
        names(&committed),
        want,
        "man/ does not hold exactly the generated pages; run BLESS=1 cargo test -p dmabuf-info --test man"
    );
    for name in &want {
        let new = std::fs::read_to_string(fresh.path().join(name)).unwrap();
        let old = std::fs::read_to_string(committed.join(name)).unwrap();
        assert!(
            new == old,
            "man/{name} is out of date; run BLESS=1 cargo test -p dmabuf-info --test man"
        );
    }
}
