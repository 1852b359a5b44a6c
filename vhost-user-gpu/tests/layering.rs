//! The crate's layering, checked on its sources (the picture in the README's layout section):
//!
//! ```text
//! protocol, queue_thread, guest_log   (lowest: import nothing from the crate)
//!   <- device                      (the core: protocol and its own ports only)
//!     <- alloc, display, advisor, renderer, sandbox, wayland   (port implementations; never
//!                                                                each other)
//!       <- transport               (vhost-user glue)
//!         <- main.rs               (the binary wires everything)
//! ```
//!
//! A module may import only from modules of a lower layer (or from itself). Inside a
//! module, two sibling files (or directories) must not import each other, and the device's
//! state owners must not import its command handlers or `GpuDevice`. The protocol and the
//! device core must not use the transport's crates (vhost, vhost-user-backend, virtio-queue,
//! vmm-sys-util) nor those of the port implementations: they are testable without sockets.
//!
//! The sources are read as text: comments, strings and character literals are blanked, `use`
//! trees are expanded, and `crate::`/`super::`/`self::` paths are resolved against the file's
//! module (inline `mod` blocks included).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module (lower imports nothing from higher or equal, except
/// itself).
const LAYERS: &[(&str, u32)] = &[
    ("protocol", 0),
    ("queue_thread", 0),
    ("guest_log", 0),
    ("device", 1),
    ("alloc", 2),
    ("display", 2),
    ("advisor", 2),
    ("renderer", 2),
    ("sandbox", 2),
    ("wayland", 2),
    ("transport", 3),
];

/// External crates the protocol and the device core must not use.
const NOT_IN_CORE: &[&str] = &[
    "vhost",
    "vhost_user_backend",
    "virtio_queue",
    "vmm_sys_util",
    "seccompiler",
    "landlock",
    "png",
    "clap",
    "gbm",
    "drm",
    "libloading",
];

fn layer(module: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|&(_, l)| l)
        .unwrap_or_else(|| panic!("module `{module}` has no layer in tests/layering.rs"))
}

/// Blanks comments, string and character literals (keeps line structure and lifetimes).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // Raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && b[j + 1..].iter().take(hashes).all(|&h| h == b'#') {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &x in &b[i..j.min(b.len())] {
                blank(&mut out, x);
            }
            i = j;
        } else if c == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if c == b'\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime (kept).
            let rest = &b[i + 1..];
            let len = if rest.first() == Some(&b'\\') {
                rest.iter().position(|&x| x == b'\'').map(|p| p + 1)
            } else if rest.get(1) == Some(&b'\'') {
                Some(2)
            } else {
                None
            };
            match len {
                Some(n) => {
                    out.extend(std::iter::repeat_n(b' ', n + 1));
                    i += n + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).expect("ASCII replacements keep UTF-8")
}

/// Splits stripped source into identifier and punctuation tokens, with the brace depth.
fn tokens(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            cur.push(c);
            i += 1;
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
            continue;
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
        i += 1;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Expands a `use` tree starting at `toks[*i]` into full paths (segments).
fn use_tree(toks: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    while *i < toks.len() {
        let t = toks[*i].as_str();
        match t {
            "{" => {
                *i += 1;
                loop {
                    use_tree(toks, i, &path, out);
                    match toks.get(*i).map(String::as_str) {
                        Some(",") => *i += 1,
                        Some("}") => {
                            *i += 1;
                            return;
                        }
                        _ => return,
                    }
                    if toks.get(*i).map(String::as_str) == Some("}") {
                        *i += 1;
                        return;
                    }
                }
            }
            "::" => *i += 1,
            "as" => {
                *i += 2;
            }
            "," | "}" | ";" => break,
            "*" => {
                *i += 1;
            }
            // `{self, ...}` names the prefix itself.
            "self" if !path.is_empty() => {
                *i += 1;
            }
            _ => {
                path.push(t.to_string());
                *i += 1;
            }
        }
    }
    out.push(path);
}

/// The module path of a source file (`src/device/commands/blob.rs` -> device/commands/blob).
fn module_of(src_dir: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Every path a file refers to, resolved to crate-absolute segments, with the external
/// crates it names. Paths are resolved against the inline module they appear in.
fn references(module: &[String], src: &str) -> (Vec<Vec<String>>, BTreeSet<String>) {
    let toks = tokens(&strip(src));
    let mut paths = Vec::new();
    let mut externs = BTreeSet::new();
    // Stack of (inline module name, brace depth at which it opened).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let here = |inline: &Vec<(String, usize)>| {
        let mut m = module.to_vec();
        m.extend(inline.iter().map(|(n, _)| n.clone()));
        m
    };
    let resolve = |base: &[String], p: &[String]| -> Option<Vec<String>> {
        let mut cur: Vec<String>;
        let mut rest = p;
        match p.first().map(String::as_str) {
            Some("crate") => {
                cur = Vec::new();
                rest = &p[1..];
            }
            Some("self") => {
                cur = base.to_vec();
                rest = &p[1..];
            }
            Some("super") => {
                cur = base.to_vec();
                while rest.first().map(String::as_str) == Some("super") {
                    cur.pop()?;
                    rest = &rest[1..];
                }
            }
            _ => return None,
        }
        cur.extend(rest.iter().cloned());
        Some(cur)
    };
    while i < toks.len() {
        let t = toks[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if toks.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push((toks[i + 1].clone(), depth));
                depth += 1;
                i += 3;
                continue;
            }
            "use" => {
                let is_pub_use = i > 0 && (toks[i - 1] == "pub" || toks[i - 1] == ")");
                i += 1;
                let mut expanded = Vec::new();
                use_tree(&toks, &mut i, &[], &mut expanded);
                for p in expanded {
                    match p.first().map(String::as_str) {
                        Some("crate" | "self" | "super") => {
                            if let Some(abs) = resolve(&here(&inline), &p) {
                                // A module re-exporting a child's items (`pub use`) is the
                                // child's face, not a dependency on it.
                                if !(is_pub_use && abs.starts_with(&here(&inline))) {
                                    paths.push(abs);
                                }
                            }
                        }
                        Some(first) => {
                            externs.insert(first.to_string());
                        }
                        None => {}
                    }
                }
                continue;
            }
            "crate" | "super" | "self"
                if toks.get(i + 1).map(String::as_str) == Some("::")
                    && (i == 0 || toks[i - 1] != "::") =>
            {
                let mut p = vec![t.to_string()];
                let mut j = i + 1;
                while toks.get(j).map(String::as_str) == Some("::") {
                    match toks.get(j + 1) {
                        Some(seg) if seg.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                            p.push(seg.clone());
                            j += 2;
                        }
                        _ => break,
                    }
                }
                if let Some(abs) = resolve(&here(&inline), &p) {
                    paths.push(abs);
                }
                i = j;
                continue;
            }
            _ => {
                // `some_crate::path` written inline.
                if toks.get(i + 1).map(String::as_str) == Some("::")
                    && (i == 0 || toks[i - 1] != "::")
                    && t.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    externs.insert(t.to_string());
                }
            }
        }
        i += 1;
    }
    (paths, externs)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The sibling module a path lands in, seen from `module`: the first segment where the two
/// differ, when that names a module (a file or directory) of their deepest common module.
/// `None` for paths into `module` itself, its children, or items of an ancestor.
fn sibling_of(
    module: &[String],
    target: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<(Vec<String>, String)> {
    let common = module
        .iter()
        .zip(target)
        .take_while(|(a, b)| a == b)
        .count();
    if common == module.len() || common == target.len() {
        return None;
    }
    let sibling = target[..=common].to_vec();
    modules
        .contains(&sibling)
        .then(|| (module[..common].to_vec(), target[common].clone()))
}

#[test]
fn modules_import_only_downward_and_never_each_other() {
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src_dir, &mut files);
    files.sort();
    let mut problems = Vec::new();
    // (parent module, from node, to node) edges between siblings.
    let mut sibling_edges: BTreeMap<(Vec<String>, String, String), String> = BTreeMap::new();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src_dir, f)).collect();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src_dir).unwrap().display().to_string();
        if rel == "main.rs" {
            continue; // the binary sits on top and wires everything
        }
        let module = module_of(&src_dir, file);
        let src = std::fs::read_to_string(file).unwrap();
        let (paths, externs) = references(&module, &src);
        checked += 1;
        let Some(top) = module.first() else {
            continue; // lib.rs declares the modules
        };
        for p in &paths {
            let Some(target_top) = p.first() else {
                continue;
            };
            if target_top != top && layer(target_top) >= layer(top) {
                problems.push(format!(
                    "{rel}: `{top}` (layer {}) imports `{}` (layer {}): imports go only to \
                     lower layers",
                    layer(top),
                    p.join("::"),
                    layer(target_top),
                ));
            }
            if let Some((parent, to)) = sibling_of(&module, p, &modules) {
                let from = module[parent.len()].clone();
                if from != to {
                    sibling_edges
                        .entry((parent, from, to))
                        .or_insert_with(|| format!("{rel}: {}", p.join("::")));
                }
            }
            // The device's state owners know neither the handlers nor the device.
            if top == "device"
                && module.get(1).is_some_and(|m| m != "commands")
                && (p.starts_with(&["device".into(), "commands".into()])
                    || p == &["device".to_string(), "GpuDevice".to_string()])
            {
                problems.push(format!(
                    "{rel}: device state imports `{}` (state owners must not know the \
                     handlers or GpuDevice)",
                    p.join("::")
                ));
            }
        }
        if top == "protocol" || top == "device" {
            for e in externs.iter().filter(|e| NOT_IN_CORE.contains(&e.as_str())) {
                problems.push(format!("{rel}: the core uses the `{e}` crate"));
            }
        }
    }
    for ((parent, from, to), example) in &sibling_edges {
        if sibling_edges.contains_key(&(parent.clone(), to.clone(), from.clone())) && from < to {
            let name = |m: &str| {
                let mut path = parent.clone();
                path.push(m.to_string());
                path.join("::")
            };
            problems.push(format!(
                "`{}` and `{}` import each other (e.g. {example})",
                name(from),
                name(to)
            ));
        }
    }
    assert!(
        checked > 30,
        "only {checked} files read: is the crate layout still src/?"
    );
    assert!(
        problems.is_empty(),
        "layering violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_violations() {
    // A device file that imports the transport, a protocol file that imports the device, and
    // a path inside an inline test module resolved against that module.
    let device = vec!["device".to_string(), "blob".to_string()];
    let (paths, _) = references(
        &device,
        "use crate::transport::shmem::X; fn f() { let _ = super::ports::PAGE_SIZE; }\n\
         mod tests { use super::*; use crate::alloc::memfd; }",
    );
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert!(
        joined.contains(&"transport::shmem::X".to_string()),
        "{joined:?}"
    );
    assert!(
        joined.contains(&"device::ports::PAGE_SIZE".to_string()),
        "{joined:?}"
    );
    assert!(joined.contains(&"device::blob".to_string()), "{joined:?}");
    assert!(joined.contains(&"alloc::memfd".to_string()), "{joined:?}");
    let (_, externs) = references(
        &["protocol".to_string()],
        "// use vhost::x;\nuse vhost_user_backend::Y; fn f() -> &'static str { \"vhost::z\" }",
    );
    assert_eq!(
        externs.into_iter().collect::<Vec<_>>(),
        vec!["vhost_user_backend"]
    );
    assert!(layer("transport") > layer("device"));
    let modules: BTreeSet<Vec<String>> = [
        vec!["device"],
        vec!["device", "blob"],
        vec!["device", "ports"],
    ]
    .into_iter()
    .map(|m| m.into_iter().map(String::from).collect())
    .collect();
    assert_eq!(
        sibling_of(
            &device,
            &["device".into(), "ports".into(), "X".into()],
            &modules
        ),
        Some((vec!["device".to_string()], "ports".to_string()))
    );
    // An item of the parent module is not a sibling.
    assert_eq!(
        sibling_of(&device, &["device".into(), "Reject".into()], &modules),
        None
    );
}
