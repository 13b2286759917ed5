//! Builds the eBPF object that `tlsmon` embeds.
//!
//! With `TLSMON_BUILD_EBPF=1` (set by `cargo xtask`), aya-build compiles `monitor-ebpf` with
//! the pinned nightly and bpf-linker. Otherwise an empty object is written so plain
//! `cargo build` / `cargo test` need neither nightly nor bpf-linker; such a binary says so
//! clearly when asked to capture.
use std::{env, fs, path::PathBuf};

/// The nightly that builds the eBPF crate (see shared toolchain notes and xtask).
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-30";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TLSMON_BUILD_EBPF");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let object = out.join("monitor");
    if env::var("TLSMON_BUILD_EBPF").as_deref() != Ok("1") {
        fs::write(&object, [])?;
        return Ok(());
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../monitor-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "monitor-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
