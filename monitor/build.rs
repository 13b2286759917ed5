//! Embeds the eBPF object that `tlsmon` loads.
//!
//! `cargo xtask build` (and every xtask that needs a capturing daemon) first builds
//! `monitor-ebpf` with the pinned nightly and bpf-linker, in the open so its progress and
//! warnings read as ordinary cargo output, then builds this crate with
//! `TLSMON_EBPF_OBJECT=<path of the object>`. Without it an empty object is embedded, so
//! plain `cargo build` / `cargo test` need neither nightly nor bpf-linker; such a binary
//! says so clearly when asked to capture.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=TLSMON_EBPF_OBJECT");
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let object = out.join("monitor");
    match env::var_os("TLSMON_EBPF_OBJECT") {
        Some(built) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&built).display());
            fs::copy(&built, &object).map_err(|e| {
                format!(
                    "TLSMON_EBPF_OBJECT={}: {e} (build it with `cargo xtask build`)",
                    PathBuf::from(&built).display()
                )
            })?;
        }
        None => fs::write(&object, []).map_err(|e| format!("{}: {e}", object.display()))?,
    }
    Ok(())
}
