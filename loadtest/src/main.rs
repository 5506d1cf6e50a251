//! `cargo run --release -p loadtest -- [--scenario chat|bigroom|storm|step] [goose options]`
//! (`--help` lists everything). Thin: parse, build the runtime, run, print and write reports.

use loadtest::config::Command;

fn main() -> anyhow::Result<()> {
    let mut cli = loadtest::config::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match cli.command.take() {
        Some(Command::Serve { args }) => return loadtest::embedded::serve(&args),
        Some(Command::Compare { a, b }) => {
            let (a, b) = (loadtest::Report::read(&a)?, loadtest::Report::read(&b)?);
            print!("{}", loadtest::compare::compare(&a, &b));
            return Ok(());
        }
        None => {}
    }
    if let Some(paths) = cli.compare.take() {
        let (a, b) = (
            loadtest::Report::read(&paths[0])?,
            loadtest::Report::read(&paths[1])?,
        );
        print!("{}", loadtest::compare::compare(&a, &b));
        return Ok(());
    }
    // Goose's own report by default, unless it keeps no metrics to report (it refuses a report
    // file with --no-metrics).
    if cli.goose.report_file.is_empty() && !cli.goose.no_metrics {
        cli.goose.report_file.push("goose-report.html".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(loadtest::sys::cpus())
        .thread_name("loadtest-worker")
        .enable_all()
        .build()?;
    let exe = std::env::current_exe().ok();
    let server_args = cli.server_arg.clone();
    let outcome = runtime.block_on(loadtest::execute(
        &cli.options,
        cli.goose,
        exe,
        &server_args,
    ))?;
    print!("{}", outcome.report.summary());
    let (json, html) = outcome.report.write(&cli.options.fanout_report)?;
    println!("fan-out report: {} and {}", json.display(), html.display());
    if let Some(e) = outcome.goose_error {
        anyhow::bail!("goose: {e}");
    }
    Ok(())
}
