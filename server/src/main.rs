//! The `tidechat` binary: options, logging, bind, serve until SIGINT/SIGTERM.

use anyhow::Context;
use async_std::net::TcpListener;
use clap::Parser;
use tidechat::config::Args;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // async-std sizes its executor from this variable when it first starts, which is below.
    std::env::set_var(
        "ASYNC_STD_THREAD_COUNT",
        args.executor_threads().to_string(),
    );
    async_std::task::block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    tidechat::logging::init(args.log_level, args.log_format);
    log::debug!("executor threads: {}", args.executor_threads());
    let bind = args.bind;
    let config = args.into_config()?;

    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .context("installing the SIGINT/SIGTERM handler")?;

    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let addr = listener.local_addr()?;
    log::info!("tidechat listening on http://{addr}");
    tidechat::run(listener, config, async move {
        let _ = stop_rx.recv().await;
    })
    .await?;
    log::info!("tidechat stopped");
    Ok(())
}
