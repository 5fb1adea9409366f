//! Build script of the `fastmmap` crate.
//!
//! Every build picks the page-lock backend: `cfg(fastmmap_portable)` (the fcntl
//! backend and the POSIX fallbacks of `rust/platform`) on every target but Linux, and on
//! Linux when the `portable` feature is on (`FASTMMAP_PORTABLE=1 perl Makefile.PL`).
//! With `--features gen-header` (`make header`, `make headercheck`) it runs
//! cbindgen over rust/ffi.rs, the only module with `extern "C"` items, and
//! writes the C header xs/fastmmap.h that the XS layer includes.

fn main() {
    println!("cargo:rerun-if-changed=rust/build.rs");
    println!("cargo:rustc-check-cfg=cfg(fastmmap_portable)");
    // Cargo tells build scripts the target (not the host) and the enabled features.
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let portable_feature = std::env::var_os("CARGO_FEATURE_PORTABLE").is_some();
    if !linux || portable_feature {
        println!("cargo:rustc-cfg=fastmmap_portable");
    }
    #[cfg(feature = "gen-header")]
    header::generate();
}

#[cfg(feature = "gen-header")]
mod header {
    use std::path::PathBuf;

    pub fn generate() {
        let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
        let config_path = root.join("cbindgen.toml");
        let src = root.join("rust").join("ffi.rs");
        let out = root.join("xs").join("fastmmap.h");

        // Rerun when any Rust source, the config or the header itself changes,
        // so a hand-edited or deleted header is regenerated (and caught by
        // `make headercheck`). cbindgen only rewrites the file when its content
        // differs, so an unchanged header does not make the next run dirty.
        println!("cargo:rerun-if-changed=rust");
        println!("cargo:rerun-if-changed=cbindgen.toml");
        println!("cargo:rerun-if-changed=xs/fastmmap.h");

        let config = cbindgen::Config::from_file(&config_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", config_path.display()));
        let bindings = cbindgen::Builder::new()
            .with_config(config)
            .with_src(&src)
            .generate()
            .unwrap_or_else(|e| panic!("cbindgen failed on {}: {e}", src.display()));
        bindings.write_to_file(&out);
    }
}
