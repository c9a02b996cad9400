//! Scheduled reports (the rules file's `[[report]]`): when each is due
//! (crontab schedules, UTC), its table (the SLA over 24 hours per service
//! and method, or what the recommendations sold over 24 hours per variant
//! and placement), rendered as CSV or JSON, and sent to its channels: a
//! webhook gets the JSON document with a summary line (Slack shows the
//! line), email gets the file attached.

use std::collections::HashMap;

use lettre::Message;
use lettre::message::{Attachment, MultiPart, SinglePart, header::ContentType};
use serde_json::{Value, json};

use crate::channels::Channel;
use crate::rules::reports::{Format, ReportKind, ReportSpec};

/// A table: its columns and rows of cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Header.
    pub columns: Vec<&'static str>,
    /// Rows, each as long as the header.
    pub rows: Vec<Vec<String>>,
}

/// RFC 4180 CSV: a cell with a comma, quote or line break is quoted, its
/// quotes doubled. (Hand-written: the `csv` crate's reader and writer
/// machinery for one header and a few rows of text.)
pub fn csv(t: &Table) -> String {
    let cell = |c: &str| {
        if c.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", c.replace('"', "\"\""))
        } else {
            c.to_string()
        }
    };
    let line = |cells: Vec<String>| cells.iter().map(|c| cell(c)).collect::<Vec<_>>().join(",");
    let mut out = line(t.columns.iter().map(|c| c.to_string()).collect());
    out.push_str("\r\n");
    for r in &t.rows {
        out.push_str(&line(r.clone()));
        out.push_str("\r\n");
    }
    out
}

/// A report ready to send.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The report's name.
    pub name: String,
    /// `daily-sla-2026-12-05T0700Z.csv`.
    pub file_name: String,
    /// `text/csv` or `application/json`.
    pub content_type: &'static str,
    /// The file.
    pub body: String,
    /// One line for people ("daily-sla: 14 rows, 24 h to ...").
    pub summary: String,
    /// The whole report as JSON (what a webhook gets).
    pub document: Value,
}

/// Renders `table` for `spec`, due at `due_ms`.
pub fn render(spec: &ReportSpec, table: &Table, due_ms: i64) -> Rendered {
    let stamp = chrono::DateTime::from_timestamp_millis(due_ms)
        .map(|d| d.format("%Y-%m-%dT%H%MZ").to_string())
        .unwrap_or_default();
    let kind = match spec.kind {
        ReportKind::Sla => "sla",
        ReportKind::Recommendations => "recommendations",
    };
    let records: Vec<Value> = table
        .rows
        .iter()
        .map(|r| {
            Value::Object(
                table
                    .columns
                    .iter()
                    .zip(r)
                    .map(|(c, v)| (c.to_string(), Value::String(v.clone())))
                    .collect(),
            )
        })
        .collect();
    let document = json!({
        "report": spec.name, "kind": kind, "window": "24h", "due_at_unix_ms": due_ms,
        "columns": table.columns, "rows": records,
    });
    let summary = format!(
        "discovery report {}: {kind}, last 24 hours, {} rows (due {stamp})",
        spec.name,
        table.rows.len()
    );
    let (ext, content_type, body) = match spec.format {
        Format::Csv => ("csv", "text/csv", csv(table)),
        Format::Json => (
            "json",
            "application/json",
            serde_json::to_string_pretty(&document).unwrap_or_default(),
        ),
    };
    Rendered {
        name: spec.name.clone(),
        file_name: format!("{}-{stamp}.{ext}", spec.name),
        content_type,
        body,
        summary,
        document,
    }
}

/// Sends a rendered report through `channel`: the attempts it took, or why
/// it failed for good.
pub async fn send(channel: &Channel, r: &Rendered) -> Result<u32, String> {
    match channel {
        Channel::Slack(hook) => {
            let mut body = r.document.clone();
            body["text"] = Value::String(r.summary.clone());
            hook.post_json(&body).await.map_err(|e| e.to_string())
        }
        Channel::PagerDuty { .. } => {
            Err("reports do not go to a pager (the rules file refuses it)".into())
        }
        Channel::Email { mailer, from, to } => {
            let ct = ContentType::parse(r.content_type).map_err(|e| e.to_string())?;
            let mut builder = Message::builder()
                .from(from.clone())
                .subject(format!("[report] {}", r.name));
            for t in to {
                builder = builder.to(t.clone());
            }
            let message = builder
                .multipart(
                    MultiPart::mixed()
                        .singlepart(SinglePart::plain(format!("{}\n", r.summary)))
                        .singlepart(Attachment::new(r.file_name.clone()).body(r.body.clone(), ct)),
                )
                .map_err(|e| format!("the message: {e}"))?;
            crate::channels::send_mail(mailer, message).await
        }
    }
}

/// When each report is next due.
#[derive(Debug, Default)]
pub struct Due {
    next: HashMap<String, (String, i64)>,
}

impl Due {
    /// The reports due at `now_ms` (each with the time it was due), and
    /// their next times set. A report seen for the first time, or whose
    /// schedule changed, is due at its next time after now (a restart
    /// does not send what was due before it).
    pub fn take(&mut self, reports: &[ReportSpec], now_ms: i64) -> Vec<(ReportSpec, i64)> {
        self.next
            .retain(|name, _| reports.iter().any(|r| &r.name == name));
        let mut due = Vec::new();
        for r in reports {
            let entry = self.next.get(&r.name).cloned();
            let next = match entry {
                Some((text, at)) if text == r.schedule_text => at,
                _ => {
                    if let Some(at) = r.next_after(now_ms) {
                        self.next
                            .insert(r.name.clone(), (r.schedule_text.clone(), at));
                    }
                    continue;
                }
            };
            if now_ms >= next {
                due.push((r.clone(), next));
                if let Some(at) = r.next_after(now_ms) {
                    self.next
                        .insert(r.name.clone(), (r.schedule_text.clone(), at));
                }
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::reports::schedule;

    fn spec(format: Format) -> ReportSpec {
        ReportSpec {
            name: "daily-sla".into(),
            kind: ReportKind::Sla,
            schedule: schedule("0 7 * * *").unwrap(),
            schedule_text: "0 7 * * *".into(),
            format,
            to: vec!["webhook".into()],
        }
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let t = Table {
            columns: vec!["a", "b"],
            rows: vec![
                vec!["x,y".into(), "say \"hi\"".into()],
                vec!["1".into(), "2".into()],
            ],
        };
        assert_eq!(csv(&t), "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\n1,2\r\n");
    }

    #[test]
    fn a_report_is_due_at_its_times_and_not_at_start() {
        let day = 24 * 3600 * 1000;
        // 2026-12-05 06:00 UTC.
        let six = 1_796_450_400_000;
        let mut due = Due::default();
        let reports = [spec(Format::Csv)];
        assert!(due.take(&reports, six).is_empty(), "not at start");
        assert!(due.take(&reports, six + 3_599_000).is_empty(), "06:59:59");
        let got = due.take(&reports, six + 3_600_000 + 5_000);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, six + 3_600_000, "due at 07:00");
        assert!(due.take(&reports, six + 3_700_000).is_empty(), "once");
        assert_eq!(
            due.take(&reports, six + 3_600_000 + day).len(),
            1,
            "the next day"
        );
        // A report taken out of the file is forgotten.
        assert!(due.take(&[], six + 2 * day).is_empty());
        assert!(due.next.is_empty());
    }

    #[test]
    fn render_names_the_file_and_keeps_every_row() {
        use discovery_proto::v1 as pb;
        let t = crate::convert::sla_table(&pb::GetSlaReportResponse {
            methods: vec![pb::MethodStats {
                service: "gateway".into(),
                method: "/discovery.v1.Discovery/Recommend".into(),
                count: 1000,
                errors: 2,
                availability: 0.998,
                p95_ms: 12.5,
                ..Default::default()
            }],
            ..Default::default()
        });
        let r = render(&spec(Format::Csv), &t, 1_796_454_000_000);
        assert_eq!(r.file_name, "daily-sla-2026-12-05T0700Z.csv");
        assert!(
            r.body
                .starts_with("service,method,calls,server_errors,availability")
        );
        assert!(
            r.body
                .contains("gateway,/discovery.v1.Discovery/Recommend,1000,2,0.99800")
        );
        assert_eq!(r.document["rows"][0]["p95_ms"], "12.50");
        let j = render(&spec(Format::Json), &t, 1_796_454_000_000);
        assert_eq!(j.content_type, "application/json");
        assert_eq!(
            serde_json::from_str::<Value>(&j.body).unwrap()["rows"][0]["calls"],
            "1000"
        );
    }
}
