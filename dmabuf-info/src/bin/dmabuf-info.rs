//! `dmabuf-info` command line tool.
fn main() {}
