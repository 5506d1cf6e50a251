//! `bench`: see `scripts/bench --help`. Thin: parse, run from the workspace root, exit with the
//! verdict (1 on a real regression or broken invariant).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = bench::cli::Cli::parse();
    // The workspace root: this package's parent directory.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| ".".into());
    let ending = bench::run(&root, &cli)?;
    std::process::exit(ending.exit_code());
}
