//! The goose side of a run: the scenario of chat-client transactions, and the attack.

use std::sync::Arc;

use goose::config::GooseConfiguration;
use goose::prelude::*;

use crate::client;
use crate::run::Run;

/// Builds and runs the goose attack of one run.
pub async fn attack(run: &Arc<Run>, goose: GooseConfiguration) -> Result<(), GooseError> {
    let connect: TransactionFunction = {
        let run = run.clone();
        Arc::new(move |user| {
            let run = run.clone();
            Box::pin(async move { client::connect(&run, user).await })
        })
    };
    let chat: TransactionFunction = {
        let run = run.clone();
        Arc::new(move |user| {
            let run = run.clone();
            Box::pin(async move { client::chat(&run, user).await })
        })
    };
    let drain: TransactionFunction = {
        let run = run.clone();
        Arc::new(move |user| {
            let run = run.clone();
            Box::pin(async move { client::drain(&run, user).await })
        })
    };
    let scenario = scenario!("ChatClient")
        .register_transaction(Transaction::new(connect).set_name("connect").set_on_start())
        .register_transaction(Transaction::new(chat).set_name("chat"))
        .register_transaction(Transaction::new(drain).set_name("drain").set_on_stop());
    GooseAttack::initialize_with_config(goose)?
        // One HTTP client for all users (goose builds one per user otherwise); none is used.
        .set_client_builder_without_cookies(
            goose::client::GooseClientBuilder::new().without_cookies(),
        )?
        .register_scenario(scenario)
        .execute()
        .await?;
    Ok(())
}
