//! Links the `trainguard` binary with packed relative relocations (`-z pack-relative-relocs`,
//! DT_RELR) where the toolchain and the C library support them.
//!
//! Why: `trainguard scan` is often a short process (a folder of model files in a few ms), and
//! about a tenth of that went to the dynamic loader. The position-independent binary has
//! ~12,600 relative relocations; as RELA entries they are 300 KB the loader must read, and as
//! RELR 7 KB. Measured on a mixed-format folder: 5% less wall time per scan.
//!
//! The flag needs GNU ld 2.38+ or lld 15+, and the binary then needs glibc 2.36+ at run time,
//! so it is only used when a probe program linked with it here also runs here.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if !var("TARGET").ends_with("-linux-gnu") || var("TARGET") != var("HOST") {
        return;
    }
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    // The linker rustc uses for this target unless configured otherwise.
    let cc = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_owned());
    let src = out.join("relr_probe.c");
    let exe = out.join("relr_probe");
    // A pointer in writable data: a position-independent executable relocates it at start.
    let probe = "static const char *p = \"ok\";\nint main(void) { return p[0] != 'o'; }\n";
    if fs_err::write(&src, probe).is_err() {
        return;
    }
    let linked = Command::new(&cc)
        .arg(&src)
        .args(["-pie", "-fPIE", "-Wl,-z,pack-relative-relocs", "-o"])
        .arg(&exe)
        .output()
        .is_ok_and(|o| o.status.success() && o.stderr.is_empty());
    if linked && Command::new(&exe).status().is_ok_and(|s| s.success()) {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
