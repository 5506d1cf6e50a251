//! The README's table of options, rendered from the clap definitions in [`crate::config`] (the
//! same ones `--help` is rendered from), so that the table cannot drift from the binary:
//! `tidechat --help-markdown` prints it, `scripts/readme-options` puts it in the README, and
//! `server/tests/operating.rs` fails while the README holds anything else.

use clap::CommandFactory;

use crate::config::Args;

/// The line before the table in the README.
pub const BEGIN: &str =
    "<!-- options:begin (generated from the clap definitions by scripts/readme-options; do not edit) -->";
/// The line after it.
pub const END: &str = "<!-- options:end -->";

/// One row per option `--help` shows: the flag, its environment variable, its default, and its
/// help text.
pub fn markdown() -> String {
    let command = Args::command();
    let mut out = String::from("| option | environment | default | meaning |\n|---|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if arg.is_hide_set() || matches!(long, "help" | "version") {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let mut option = format!("`--{long}`");
        if matches!(arg.get_action(), clap::ArgAction::Append) {
            option.push_str(" (repeatable, or a comma list)");
        }
        let env = arg
            .get_env()
            .map_or("-".to_string(), |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if !takes_value {
            "off".to_string()
        } else if arg.is_hide_default_value_set() {
            "see meaning".to_string()
        } else if defaults.is_empty() {
            "-".to_string()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let mut meaning = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|_| takes_value)
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !possible.is_empty() {
            meaning.push_str(&format!(" (one of {})", possible.join(", ")));
        }
        out.push_str(&format!(
            "| {option} | {env} | {default} | {} |\n",
            cell(&meaning)
        ));
    }
    out
}

/// Text for one table cell: on one line, and no `|` that would end the cell.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_option_has_one_row_with_its_variable_and_default() {
        let table = markdown();
        let row = |flag: &str| {
            let rows: Vec<&str> = table
                .lines()
                .filter(|l| l.starts_with(&format!("| `{flag}`")))
                .collect();
            assert_eq!(rows.len(), 1, "{flag}:\n{table}");
            rows[0].to_string()
        };
        let bind = row("--bind");
        assert!(
            bind.contains("| `TIDECHAT_BIND` | `127.0.0.1:3000` |"),
            "{bind}"
        );
        assert!(row("--redis").contains("(repeatable"));
        assert!(row("--log-format").contains("(one of `pretty`, `json`)"));
        assert!(row("--check-config").contains("| - | off |"));
        assert!(row("--static-dir").contains("| see meaning |"));
        assert!(!table.contains("--test-work-per-delivery") && !table.contains("--help-markdown"));
        assert!(table
            .lines()
            .all(|l| l.matches(" | ").count() == 3 || l == "|---|---|---|---|"));
    }
}
