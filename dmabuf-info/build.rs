//! Gives the cdylib its SONAME, `libdmabuf_info.so.<ABI major>`, from `src/abi_version.rs`
//! (the same constants `src/ffi.rs` and the generated header use). `scripts/install.sh` names
//! and links the installed library after it.

include!("src/abi_version.rs");

fn main() {
    println!("cargo:rerun-if-changed=src/abi_version.rs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdmabuf_info.so.{DMABUF_INFO_ABI_MAJOR}");
    // The full version, for anyone who wants it (`env!("DMABUF_INFO_ABI")`).
    println!("cargo:rustc-env=DMABUF_INFO_ABI={DMABUF_INFO_ABI_MAJOR}.{DMABUF_INFO_ABI_MINOR}");
}
