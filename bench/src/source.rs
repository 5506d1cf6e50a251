//! The two servers under test: which git revision is the baseline, its worktree and build, and
//! the candidate's build (the working tree as it is).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Runs `git args` in `root` and returns its trimmed stdout, or `None` when git fails.
fn git(root: &Path, args: &[&str]) -> anyhow::Result<Option<String>> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .context("running git")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

fn commit_of(root: &Path, rev: &str) -> anyhow::Result<Option<String>> {
    git(
        root,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
}

/// A resolved baseline revision.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Full commit hash.
    pub commit: String,
    /// How it was chosen, for the summary (e.g. `HEAD~1: merge base with main is HEAD`).
    pub how: String,
}

/// Short form of a commit hash.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

/// The baseline: `given`, else the merge base of HEAD with `main`. When that is HEAD itself (on
/// `main`, as in CI), the baseline is HEAD when the working tree has uncommitted changes (they are
/// the candidate), else `HEAD~1`. `Ok(None)` when there is no such commit (a one-commit history).
pub fn resolve_baseline(root: &Path, given: Option<&str>) -> anyhow::Result<Option<Baseline>> {
    if let Some(rev) = given {
        let commit = commit_of(root, rev)?
            .with_context(|| format!("--baseline {rev}: not a commit in this repository"))?;
        return Ok(Some(Baseline {
            commit,
            how: format!("--baseline {rev}"),
        }));
    }
    let head = commit_of(root, "HEAD")?.context("this repository has no HEAD commit")?;
    let merge_base = git(root, &["merge-base", "HEAD", "main"])?;
    match merge_base {
        Some(mb) if mb != head => Ok(Some(Baseline {
            commit: mb,
            how: "merge base with main".into(),
        })),
        other => {
            let why = if other.is_some() {
                "merge base with main is HEAD itself"
            } else {
                "no merge base with a `main` branch"
            };
            let dirty = git(root, &["diff", "--quiet", "HEAD", "--"])?.is_none();
            if dirty {
                return Ok(Some(Baseline {
                    commit: head,
                    how: format!("HEAD ({why}; the uncommitted changes are the candidate)"),
                }));
            }
            Ok(commit_of(root, "HEAD~1")?.map(|commit| Baseline {
                commit,
                how: format!("HEAD~1 ({why})"),
            }))
        }
    }
}

/// The workspace's cargo target directory (honours `CARGO_TARGET_DIR` and `.cargo/config`).
pub fn target_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let dir = v["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Checks `commit` out into a fresh detached worktree at `dir` (removing any earlier one).
pub fn worktree(root: &Path, commit: &str, dir: &Path) -> anyhow::Result<()> {
    let d = dir.to_string_lossy();
    if dir.exists() {
        // Ignore failure: it may be a plain directory left by an interrupted run.
        let _ = git(root, &["worktree", "remove", "--force", &d])?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {d}"))?;
        }
    }
    git(root, &["worktree", "prune"])?;
    let out = Command::new("git")
        .current_dir(root)
        .args(["worktree", "add", "--detach", "--force", &d, commit])
        .output()
        .context("running git worktree add")?;
    anyhow::ensure!(
        out.status.success(),
        "git worktree add {d} {commit} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Removes the baseline worktree (best effort: a later run recreates it anyway).
pub fn remove_worktree(root: &Path, dir: &Path) {
    let d = dir.to_string_lossy();
    let _ = git(root, &["worktree", "remove", "--force", &d]);
    let _ = git(root, &["worktree", "prune"]);
}

/// True when the checkout at `src` has the `server` package this benchmark runs.
pub fn has_server(src: &Path) -> bool {
    src.join("server/Cargo.toml").is_file()
}

/// `cargo build --release --bin ...` of the workspace at `src` into `target`; returns
/// `target/release`.
///
/// The baseline must not share the candidate's target (or `build.build-dir`): cargo hashes a
/// workspace member by its path *relative to the workspace root*, so the baseline's `server` and
/// the candidate's land in the same slot, and a checkout older than the candidate's artifacts is
/// taken as fresh: the "baseline" would silently be the candidate (seen in testing).
pub fn build(src: &Path, target: &Path, bins: &[&str]) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(src)
        .args(["build", "--release"])
        .env("CARGO_TARGET_DIR", target)
        .env_remove("CARGO_BUILD_BUILD_DIR");
    for b in bins {
        cmd.args(["--bin", b]);
    }
    eprintln!(
        "bench: building {} in {} (target {})",
        bins.join(", "),
        src.display(),
        target.display()
    );
    let status = cmd.status().context("running cargo build")?;
    anyhow::ensure!(
        status.success(),
        "cargo build of {} in {} failed ({status})",
        bins.join(", "),
        src.display()
    );
    let dir = target.join("release");
    for b in bins {
        anyhow::ensure!(
            dir.join(b).is_file(),
            "{} was not built",
            dir.join(b).display()
        );
    }
    Ok(dir)
}

/// HEAD's short hash, or `no commit`.
pub fn short_head(root: &Path) -> String {
    match git(root, &["rev-parse", "--short=10", "HEAD"]) {
        Ok(Some(h)) => h,
        _ => "no commit".into(),
    }
}

/// True when tracked files differ from HEAD.
pub fn is_dirty(root: &Path) -> bool {
    matches!(git(root, &["diff", "--quiet", "HEAD", "--"]), Ok(None))
}
