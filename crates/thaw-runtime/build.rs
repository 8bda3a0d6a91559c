//! Builds `thaw_reseed.node`, the Node-API addon the Node.js bootstrap uses
//! to reseed OpenSSL after a restore (see `bootstraps/node/thaw_reseed.c`).
//! It is a shared object whose OpenSSL and Node-API symbols are resolved
//! against the node binary at load time, so only a C compiler is needed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bootstraps/node/thaw_reseed.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"))
        .join("thaw_reseed.node");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-O2",
            "-fPIC",
            "-shared",
            "-fvisibility=hidden",
            "-Wall",
            "-Werror",
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{cc} failed to build {src}: {s}"),
        Err(e) => panic!("cannot run the C compiler {cc} to build {src}: {e}"),
    }
}
