//! Scheduled reports in the rules file:
//!
//! ```toml
//! [[report]]
//! name = "daily-sla"
//! kind = "sla"                # sla | recommendations
//! schedule = "0 7 * * *"      # crontab, UTC: minute hour day month weekday
//! format = "csv"              # csv | json
//! to = ["webhook", "email"]   # channels (not a pager)
//! ```
//!
//! Days of the week are names (`Mon-Fri`): crontab counts them from 0 =
//! Sunday and the `cron` crate from 1 = Sunday, so a number would mean a
//! different day to whoever wrote it; numbers are refused.

use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

/// A report as the file describes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportDef {
    name: Spanned<String>,
    kind: Spanned<String>,
    schedule: Spanned<String>,
    format: Spanned<String>,
    to: Spanned<Vec<String>>,
}

/// What a report holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// Calls, errors, availability and latency per service and method, 24 h.
    Sla,
    /// What the recommendations sold, 24 h, per variant and placement.
    Recommendations,
}

/// How a report is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values, a header row first.
    Csv,
    /// One JSON document.
    Json,
}

/// A scheduled report.
#[derive(Debug, Clone)]
pub struct ReportSpec {
    /// Name (letters, digits, dashes).
    pub name: String,
    /// Content.
    pub kind: ReportKind,
    /// When (UTC).
    pub schedule: cron::Schedule,
    /// The schedule as written.
    pub schedule_text: String,
    /// Rendering.
    pub format: Format,
    /// Channels.
    pub to: Vec<String>,
}

impl PartialEq for ReportSpec {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.name,
            self.kind,
            &self.schedule_text,
            self.format,
            &self.to,
        ) == (&o.name, o.kind, &o.schedule_text, o.format, &o.to)
    }
}

impl ReportSpec {
    /// The first time it is due strictly after `after_ms` (Unix ms).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let at = chrono::DateTime::from_timestamp_millis(after_ms)?;
        self.schedule
            .after(&at)
            .next()
            .map(|t| t.timestamp_millis())
    }
}

/// Parses a crontab schedule (five fields, UTC).
pub fn schedule(text: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "schedule {text:?}: five fields, minute hour day-of-month month day-of-week (\"0 7 * * Mon-Fri\")"
        ));
    }
    if fields[4].chars().any(|c| c.is_ascii_digit()) {
        return Err(format!(
            "schedule {text:?}: name the days of the week (Mon-Fri, Sun): crontab and this parser number them differently"
        ));
    }
    cron::Schedule::from_str(&format!("0 {text}")).map_err(|e| format!("schedule {text:?}: {e}"))
}

/// Checks the file's reports: `channel` says whether a channel of that
/// name exists and can take a report (`Err` with why not). A mistake comes
/// back with its byte offset.
pub(super) fn validate(
    defs: &[Spanned<ReportDef>],
    channel: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<ReportSpec>, (usize, String)> {
    let mut out: Vec<ReportSpec> = Vec::new();
    for d in defs {
        let def = d.get_ref();
        let name = def.name.get_ref();
        let here =
            |s: &Spanned<String>, why: String| (s.span().start, format!("report {name}: {why}"));
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(here(
                &def.name,
                "a report's name is letters, digits and dashes".into(),
            ));
        }
        if out.iter().any(|r| &r.name == name) {
            return Err(here(&def.name, "a second report with this name".into()));
        }
        let kind = match def.kind.get_ref().as_str() {
            "sla" => ReportKind::Sla,
            "recommendations" => ReportKind::Recommendations,
            k => {
                return Err(here(
                    &def.kind,
                    format!("kind {k:?} is not sla or recommendations"),
                ));
            }
        };
        let format = match def.format.get_ref().as_str() {
            "csv" => Format::Csv,
            "json" => Format::Json,
            f => {
                return Err(here(
                    &def.format,
                    format!("format {f:?} is not csv or json"),
                ));
            }
        };
        let sched = schedule(def.schedule.get_ref()).map_err(|w| here(&def.schedule, w))?;
        if def.to.get_ref().is_empty() {
            return Err((
                def.to.span().start,
                format!("report {name}: to names no channel"),
            ));
        }
        for c in def.to.get_ref() {
            channel(c).map_err(|w| (def.to.span().start, format!("report {name}: {w}")))?;
        }
        out.push(ReportSpec {
            name: name.clone(),
            kind,
            schedule: sched,
            schedule_text: def.schedule.get_ref().clone(),
            format,
            to: def.to.get_ref().clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_crontab_in_utc_with_named_weekdays() {
        let s = schedule("0 7 * * Mon-Fri").unwrap();
        // Friday 2026-12-04 08:00 UTC -> Monday 2026-12-07 07:00 UTC.
        let fri = chrono::DateTime::parse_from_rfc3339("2026-12-04T08:00:00Z").unwrap();
        let next = s.after(&fri.to_utc()).next().unwrap();
        assert_eq!(next.to_rfc3339(), "2026-12-07T07:00:00+00:00");
        assert!(schedule("0 7 * * 1").unwrap_err().contains("name the days"));
        assert!(schedule("0 7 * *").unwrap_err().contains("five fields"));
        assert!(schedule("0 25 * * *").is_err());
        assert!(schedule("*/15 * * * *").is_ok());
    }
}
