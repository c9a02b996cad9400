//! `discovery rules`: the alert rules file, offline. `check` says whether
//! monitoring would take a file (and why not, with the line); `render`
//! writes Prometheus' copy of the rules (the chart's `alerts.yml`).

use std::path::PathBuf;

use clap::Subcommand;
use discovery_kit::server::BoxError;
use discovery_monitoring::rules;

#[derive(Debug, Subcommand)]
pub enum RulesAction {
    /// Check a rules file as monitoring would read it (exit status 1 and the
    /// line and reason when it would be refused).
    Check {
        /// The file (`crates/monitoring/alert-rules.toml`'s form).
        file: PathBuf,
    },
    /// Print the Prometheus rules (alerts.yml) for a rules file, or for the
    /// built-in rules.
    Render {
        /// The file; without it, the built-in rules.
        file: Option<PathBuf>,
    },
}

fn read(file: &PathBuf) -> Result<Vec<rules::Rule>, BoxError> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    rules::file::parse(&text).map_err(|e| format!("{}: {e}", file.display()).into())
}

/// Runs the action.
pub fn run(action: RulesAction) -> Result<(), BoxError> {
    match action {
        RulesAction::Check { file } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let a = rules::file::parse_alerting(&text)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let names: std::collections::BTreeSet<&str> =
                a.rules.iter().map(|r| &*r.name).collect();
            println!(
                "{}: {} rules, {} alerts with their tiers, {} channels, {} scheduled reports",
                file.display(),
                names.len(),
                a.rules.len(),
                a.channels.len(),
                a.reports.len()
            );
        }
        RulesAction::Render { file } => {
            let rules = match &file {
                Some(f) => read(f)?,
                None => rules::default_rules(),
            };
            print!("{}", rules::prometheus::render(&rules));
        }
    }
    Ok(())
}
