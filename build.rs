//! Generates include/cluster.h from the FFI layer with cbindgen. Only the
//! `src/ffi` module tree is parsed, so nothing of the core can leak into
//! the header. A stale committed header is caught by a unit test
//! (`committed_header_is_current` in src/lib.rs).

use std::path::PathBuf;

fn main() {
    // The shared object's SONAME: programs record libcluster.so.0 and keep
    // working across compatible releases.
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcluster.so.{major}");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=CLUSTER_UPDATE_HEADER");
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("read cbindgen.toml");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("cluster.h");
    match cbindgen::Builder::new().with_src(root.join("src/ffi/mod.rs")).with_config(config).generate() {
        Ok(bindings) => {
            bindings.write_to_file(&out);
            // Write the committed copy only when asked, so a build never
            // dirties the tree behind the developer's back.
            if std::env::var_os("CLUSTER_UPDATE_HEADER").is_some() {
                bindings.write_to_file(root.join("include/cluster.h"));
            }
        }
        Err(e) => panic!("cbindgen failed: {e}"),
    }
}
