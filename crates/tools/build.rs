//! Records the commit the tools are built from, for the reproducibility
//! line of load-test and drill reports (`RESIDENCY_PROXY_COMMIT`; set it
//! yourself where there is no git checkout, such as a container build).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RESIDENCY_PROXY_COMMIT");
    if std::env::var_os("RESIDENCY_PROXY_COMMIT").is_some() {
        return;
    }
    // Rebuilt when the checked-out commit moves.
    for path in [
        "../../.git/HEAD",
        "../../.git/refs/heads",
        "../../.git/packed-refs",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok());
    // (Uncommitted changes are not noted: they do not rerun this script.)
    if let Some(commit) = commit {
        println!("cargo:rustc-env=RESIDENCY_PROXY_COMMIT={}", commit.trim());
    }
}
