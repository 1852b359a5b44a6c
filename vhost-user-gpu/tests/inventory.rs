//! Every line of the allocation inventory in `README-launch.md` ("Allocation inventory":
//! every host allocation a guest command can cause and what bounds it) names at least one
//! test, and every test it names exists: a conformance case of `vug-conformance`, or a Rust
//! test function (`file::name` for `tests/file.rs`, `module::tests::name` for a unit test of
//! `src/module.rs`, `a::b::tests::name` for one of `src/a/b.rs`).

use std::path::{Path, PathBuf};

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README-launch.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the inventory table: (allocation, the `Test` column).
fn rows() -> Vec<(String, String)> {
    let text = readme();
    let start = text
        .find("### Allocation inventory")
        .expect("README-launch.md has an allocation inventory");
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text[start..].lines().skip(1) {
        if line.starts_with('|') {
            in_table = true;
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
            let first = cells.first().map_or("", |c| c.trim());
            if cells.len() != 4 || first == "Allocation" || first.starts_with("---") {
                continue;
            }
            rows.push((cells[0].trim().to_string(), cells[3].trim().to_string()));
        } else if in_table {
            break;
        }
    }
    rows
}

/// The backticked names in a cell.
fn names(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Where a Rust test named `first::...::last` lives.
fn rust_test_exists(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split("::").collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates: Vec<PathBuf> = vec![
        root.join("tests").join(format!("{first}.rs")),
        root.join("src").join(format!("{first}.rs")),
        root.join("src").join(first).join("mod.rs"),
    ];
    // A unit test of a nested module: `a::b::tests::name` lives in `src/a/b.rs`.
    if let Some(at) = parts.iter().position(|p| *p == "tests") {
        if at >= 2 {
            let module = parts[..at].join("/");
            candidates.insert(0, root.join("src").join(format!("{module}.rs")));
        }
    }
    let file = candidates
        .iter()
        .find(|p| p.is_file())
        .ok_or_else(|| format!("`{name}`: no tests/{first}.rs or src/{first}.rs"))?;
    let source = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    if source.contains(&format!("fn {last}(")) {
        Ok(())
    } else {
        Err(format!("`{name}`: {} has no fn {last}", file.display()))
    }
}

#[test]
fn every_inventory_line_names_tests_that_exist() {
    let cases: Vec<&str> = vug_conformance::cases::all()
        .iter()
        .map(|c| c.name)
        .collect();
    let rows = rows();
    assert!(rows.len() >= 10, "only {} inventory rows found", rows.len());
    let mut problems = Vec::new();
    for (allocation, tests) in &rows {
        let named = names(tests);
        if named.is_empty() {
            problems.push(format!("{allocation}: no test named"));
        }
        for name in named {
            if cases.contains(&name.as_str()) {
                continue;
            }
            if let Err(e) = rust_test_exists(&name) {
                problems.push(format!("{allocation}: {e}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
