//! The `tidechat` binary: options, logging, bind, serve until SIGINT/SIGTERM.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tidechat::config::Args;

fn main() -> anyhow::Result<()> {
    // The matches too: --check-config says where each value came from.
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if args.help_markdown {
        print!("{}", tidechat::options_doc::markdown());
        return Ok(());
    }
    if args.check_config {
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        std::process::exit(tidechat::check_config::run(
            args, &matches, &mut out, &mut err,
        ));
    }
    let (bind, threads) = (args.bind, args.executor_threads());
    tidechat::logging::init(args.log_level, args.log_format);
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            // Status 2, as clap gives a malformed option: a deploy script can tell a refused
            // configuration from a server that failed to start.
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // async-std sizes its executor from this variable when it first starts, which is below.
    std::env::set_var("ASYNC_STD_THREAD_COUNT", threads.to_string());
    log::debug!("executor threads: {threads}");
    // The server runs as a task on the executor, accept loop and all, and this thread only
    // waits: async-std's own block_on would make it a second thread that polls the reactor and
    // allocates (glibc then gives it an arena of its own), so that each accept and the
    // connection it starts straddled two threads.
    let result = futures::executor::block_on(async_std::task::spawn(serve(bind, config)));
    log::logger().flush();
    result
}

async fn serve(bind: std::net::SocketAddr, config: tidechat::Config) -> anyhow::Result<()> {
    raise_nofile(&config);

    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing the SIGINT/SIGTERM/SIGHUP handlers")?;
    std::thread::Builder::new()
        .name("tidechat-signals".into())
        .spawn(move || on_signals(signals, stop_tx))
        .context("starting the signal thread")?;

    let backlog = config.backlog;
    // The history store (or Redis) first: one that cannot be opened refuses the start before
    // the port is taken.
    let server = tidechat::Server::open(config).await?;
    let listener =
        tidechat::listen::bind(bind, backlog).with_context(|| format!("binding {bind}"))?;
    let addr = listener.local_addr()?;
    log::info!("tidechat listening on http://{addr}");
    server
        .run(listener, async move {
            let _ = stop_rx.recv().await;
        })
        .await?;
    log::info!("tidechat stopped");
    Ok(())
}

/// Descriptors the server needs besides its connections: the listener, log output, the static
/// files it is serving, the executor's own.
const NOFILE_HEADROOM: u64 = 64;

/// Raises the open-file limit to its hard limit (the usual soft default, 1024, would stop the
/// server long before `--max-connections`), and warns when even that cannot hold every
/// connection the caps allow: then accepts fail (and back off) before the caps are reached.
fn raise_nofile(config: &tidechat::Config) {
    let want = (config.max_connections + config.max_http_connections) as u64 + NOFILE_HEADROOM;
    let limit = match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => {
            if soft < hard {
                if let Err(e) = rlimit::Resource::NOFILE.set(hard, hard) {
                    log::warn!("raising the open-file limit from {soft} to {hard}: {e}");
                }
            }
            rlimit::Resource::NOFILE
                .get()
                .map_or(soft, |(soft, _)| soft)
        }
        Err(e) => {
            log::warn!("reading the open-file limit: {e}");
            return;
        }
    };
    if limit < want {
        log::warn!(
            "open-file limit {limit} is below --max-connections + --max-http-connections + \
             {NOFILE_HEADROOM} = {want}: raise it (ulimit -n, LimitNOFILE=) or lower the caps"
        );
    } else {
        log::debug!("open-file limit: {limit}");
    }
}

/// The first SIGINT or SIGTERM starts the graceful shutdown; a second one exits at once with
/// the shell's status for it (128 + signal: 130, 143). SIGHUP, which a closed terminal or a
/// service manager's reload sends, is not a reason to stop: there is nothing to reload yet.
fn on_signals(mut signals: Signals, stop: async_channel::Sender<()>) {
    let mut stopping = false;
    // Ends only with the process.
    for signal in signals.forever() {
        let name = match signal {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            _ => {
                log::info!("SIGHUP ignored (nothing to reload)");
                continue;
            }
        };
        if stopping {
            log::warn!("{name} again: exiting now");
            log::logger().flush();
            std::process::exit(128 + signal);
        }
        stopping = true;
        log::info!("{name}: shutting down (send it again to exit at once)");
        let _ = stop.try_send(());
    }
}
