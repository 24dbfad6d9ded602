//! Records the git commit the programs are built from, for `--version`: an admin reporting a
//! problem can say exactly what runs. Builds outside a git checkout (a source tarball) say so.

use std::path::Path;
use std::process::Command;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let commit = Command::new("git")
        .args(["-C", &manifest, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()));
    println!(
        "cargo:rustc-env=ZREP_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("not from git")
    );
    // A new commit changes HEAD (detached) or the branch it names.
    let git = Path::new(&manifest).join("../../.git");
    for file in ["HEAD", "packed-refs"] {
        let path = git.join(file);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(branch) = head.trim().strip_prefix("ref: ")
        && git.join(branch).exists()
    {
        // (A path that does not exist would rerun this script on every build.)
        println!("cargo:rerun-if-changed={}", git.join(branch).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
