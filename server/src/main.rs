//! The `tidechat` binary: options, logging, bind, serve until SIGINT/SIGTERM.

use anyhow::Context;
use async_std::net::TcpListener;
use clap::Parser;
use tidechat::config::Args;

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tidechat::logging::init(args.log_level, args.log_format);
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
