//! Records the commit the build is from (`RESIDENCY_PROXY_COMMIT`; set it
//! yourself where there is no git checkout, such as a container build):
//! `--version`, `residency_build_info` and the reproducibility line of
//! load-test and drill reports (`residency_tools::VERSION`, `COMMIT`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RESIDENCY_PROXY_COMMIT");
    let version = env!("CARGO_PKG_VERSION");
    let commit = match std::env::var("RESIDENCY_PROXY_COMMIT") {
        // Read by `option_env!` directly.
        Ok(commit) => Some(commit),
        Err(_) => {
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
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|c| c.trim().to_string());
            // (Uncommitted changes are not noted: they do not rerun this script.)
            if let Some(commit) = &commit {
                println!("cargo:rustc-env=RESIDENCY_PROXY_COMMIT={commit}");
            }
            commit
        }
    };
    let full = match commit.filter(|c| !c.is_empty()) {
        Some(commit) => format!("{version} ({commit})"),
        None => version.to_string(),
    };
    println!("cargo:rustc-env=RESIDENCY_PROXY_VERSION={full}");
}
