//! The goose side of a run: the scenario of chat-client transactions, the defaults goose is
//! given, and the attack.
//!
//! Transactions are plain `async fn(&mut GooseUser)` items registered with goose's own
//! `transaction!` macro, so the run they share is reached through a process-wide slot
//! ([`run`]), set for the length of [`attack`]. One attack at a time per process: goose has
//! process-wide state too (its killswitch), so [`prepare`] waits for the previous run to end
//! ([`OneAttack`], held until the caller drops it).

use std::sync::{Arc, RwLock};

use goose::config::{GooseConfiguration, GooseDefault, GooseDefaultType};
use goose::prelude::*;

use crate::client::{chat, connect, drain};
use crate::config::{GooseDefaults, Options, Params};
use crate::run::Run;

/// The run the transactions of the current attack share.
static CURRENT: RwLock<Option<Arc<Run>>> = RwLock::new(None);
/// Held from [`prepare`] until the run's [`OneAttack`] is dropped.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The right to run the process's one attack, and what goose is to be given.
pub struct OneAttack {
    defaults: GooseDefaults,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl OneAttack {
    pub fn defaults(&self) -> &GooseDefaults {
        &self.defaults
    }
}

/// The run of the current attack, for the transactions.
///
/// # Panics
/// Outside [`attack`] (no run is set).
pub fn run() -> Arc<Run> {
    CURRENT
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("a transaction runs only inside attack::attack")
}

/// Sets the current run; clears it when dropped.
struct Current;

impl Current {
    fn set(run: &Arc<Run>) -> Self {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(run.clone());
        Current
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The one scenario: connect (on start), chat (the loop), drain (on stop).
fn scenario() -> Scenario {
    scenario!("ChatClient")
        .register_transaction(transaction!(connect).set_name("connect").set_on_start())
        .register_transaction(transaction!(chat).set_name("chat"))
        .register_transaction(transaction!(drain).set_name("drain").set_on_stop())
}

/// The attack, configured: the command line's configuration, the harness's defaults, the
/// scenario.
fn goose_attack(
    goose: GooseConfiguration,
    d: &GooseDefaults,
) -> Result<Box<GooseAttack>, GooseError> {
    let mut a = Box::new(
        GooseAttack::initialize_with_config(goose)?
            // One HTTP client for all users (goose builds one per user otherwise); none is used.
            .set_client_builder_without_cookies(
                goose::client::GooseClientBuilder::new().without_cookies(),
            )?
            .register_scenario(scenario()),
    );
    if let Some(users) = d.users {
        a = a.set_default(GooseDefault::Users, users)?;
    }
    if let Some(rate) = &d.increase_rate {
        a = a.set_default(GooseDefault::IncreaseRate, rate.as_str())?;
    }
    if let Some(secs) = d.run_time {
        a = a.set_default(GooseDefault::RunTime, secs)?;
    }
    if d.no_reset_metrics {
        a = a.set_default(GooseDefault::NoResetMetrics, true)?;
    }
    if d.no_transaction_metrics {
        a = a.set_default(GooseDefault::NoTransactionMetrics, true)?;
    }
    if d.no_scenario_metrics {
        a = a.set_default(GooseDefault::NoScenarioMetrics, true)?;
    }
    if d.no_telnet {
        a = a.set_default(GooseDefault::NoTelnet, true)?;
    }
    Ok(a)
}

/// Resolves the run ([`Options::plan`]) and waits for the process's turn to attack.
///
/// Goose's information flags are handled here, before any server starts: `--version` and
/// `--list` print and end the process (as goose does), and so does `--render-report` once
/// goose has written the reports.
pub async fn prepare(
    options: &Options,
    goose: &GooseConfiguration,
) -> anyhow::Result<(Params, OneAttack)> {
    let plan = options.plan(goose)?;
    if goose.version || goose.list || goose.render_report.is_some() {
        goose_attack(goose.clone(), &plan.defaults)?
            .execute()
            .await
            .map_err(|e| anyhow::anyhow!("goose: {}", GooseFailure(e)))?;
        std::process::exit(0);
    }
    let turn = ONE_AT_A_TIME.lock().await;
    Ok((
        plan.params,
        OneAttack {
            defaults: plan.defaults,
            _turn: turn,
        },
    ))
}

/// A goose error that says why: goose's `Display` of a refused option leaves out the reason.
#[derive(Debug)]
pub struct GooseFailure(pub GooseError);

impl std::fmt::Display for GooseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            GooseError::InvalidOption {
                option,
                value,
                detail,
            } => write!(f, "{}: {detail} ({option} = {value:?})", self.0),
            e => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GooseFailure {}

/// Builds and runs the goose attack of one run.
pub async fn attack(
    one: &OneAttack,
    run: &Arc<Run>,
    goose: GooseConfiguration,
) -> Result<(), GooseFailure> {
    let _current = Current::set(run);
    goose_attack(goose, &one.defaults)
        .map_err(GooseFailure)?
        .execute()
        .await
        .map_err(GooseFailure)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenario_has_goose_named_transactions() {
        let s = scenario();
        let names: Vec<_> = s
            .transactions
            .iter()
            .map(|t| (t.name.name_for_transaction(), t.on_start, t.on_stop))
            .collect();
        assert_eq!(
            names,
            [
                ("connect", true, false),
                ("chat", false, false),
                ("drain", false, true),
            ]
        );
    }

    #[test]
    fn goose_refusals_say_why() {
        let e = GooseFailure(GooseError::InvalidOption {
            option: "`configuration.users`".into(),
            value: "1".into(),
            detail: "`configuration.users` must be set to at least 2.".into(),
        });
        let text = e.to_string();
        assert!(
            text.contains("at least 2") && text.contains("users"),
            "{text}"
        );
    }

    #[test]
    fn no_run_outside_an_attack() {
        assert!(std::panic::catch_unwind(run).is_err());
    }
}
