//! Helpers every binary test shares: running `decomp`, generated CIFAR-format records.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `decomp` with `args`; (success, stdout, stderr).
pub fn decomp(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_decomp"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run decomp");
    split(out)
}

/// Runs `decomp` through `sh -c` after `prelude` (e.g. `umask 077`).
pub fn decomp_sh(prelude: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{prelude}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_decomp"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sh");
    split(out)
}

fn split(out: Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Writes `n` CIFAR-10 records (label i % 10, pixels from i).
pub fn cifar_file(path: &Path, n: usize) {
    let mut bytes = Vec::with_capacity(n * 3073);
    for i in 0..n {
        bytes.push((i % 10) as u8);
        bytes.extend((0..3072).map(|p| ((p * 7 + i * 13 + p * p * i) % 256) as u8));
    }
    std::fs::write(path, bytes).expect("write records");
}

/// The path as `&str`.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}
