//! Monitoring's domain in its proto form and back: the rules' severities
//! and phases as the API's alert fields, trends' directions, and the API's
//! reports as the tables scheduled reports render.

use discovery_proto::v1 as pb;

use crate::rules::{Phase, Severity};

/// A rule's severity as the API's.
pub fn severity(s: Severity) -> pb::Severity {
    match s {
        Severity::Info => pb::Severity::Info,
        Severity::Warning => pb::Severity::Warning,
        Severity::Critical => pb::Severity::Critical,
    }
}

/// An alert's phase as the API's state.
pub fn alert_state(p: Phase) -> pb::AlertState {
    match p {
        Phase::Resolved => pb::AlertState::Resolved,
        Phase::Firing => pb::AlertState::Firing,
        Phase::Pending => pb::AlertState::Pending,
    }
}

/// The API's severity as a rule's (unknown values as info).
pub fn rule_severity(s: i32) -> Severity {
    match pb::Severity::try_from(s) {
        Ok(pb::Severity::Critical) => Severity::Critical,
        Ok(pb::Severity::Warning) => Severity::Warning,
        _ => Severity::Info,
    }
}

/// A silence as the API's.
pub fn silence(s: &crate::lifecycle::Silence) -> pb::Silence {
    pb::Silence {
        id: s.id.clone(),
        rule: s.rule.clone(),
        labels: s.labels.clone().into_iter().collect(),
        reason: s.reason.clone(),
        created_by: s.created_by.clone(),
        created_at_unix_ms: s.created_at_ms,
        expires_at_unix_ms: s.expires_at_ms,
    }
}

/// The API's silence request as the domain's.
pub fn silence_request(r: &pb::CreateSilenceRequest) -> crate::lifecycle::SilenceRequest {
    crate::lifecycle::SilenceRequest {
        rule: r.rule.clone(),
        labels: r.labels.clone(),
        duration_seconds: r.duration_seconds,
        reason: r.reason.clone(),
    }
}

/// A trend's direction as the API's.
pub fn direction(d: crate::trends::Direction) -> pb::TrendDirection {
    match d {
        crate::trends::Direction::Rising => pb::TrendDirection::Rising,
        crate::trends::Direction::Falling => pb::TrendDirection::Falling,
        crate::trends::Direction::Steady => pb::TrendDirection::Steady,
    }
}

/// The SLA report as a table: one row per service and method.
pub fn sla_table(r: &pb::GetSlaReportResponse) -> crate::reports::Table {
    crate::reports::Table {
        columns: vec![
            "service",
            "method",
            "calls",
            "server_errors",
            "availability",
            "p50_ms",
            "p95_ms",
            "p99_ms",
        ],
        rows: r
            .methods
            .iter()
            .map(|m| {
                vec![
                    m.service.clone(),
                    m.method.clone(),
                    m.count.to_string(),
                    m.errors.to_string(),
                    format!("{:.5}", m.availability),
                    format!("{:.2}", m.p50_ms),
                    format!("{:.2}", m.p95_ms),
                    format!("{:.2}", m.p99_ms),
                ]
            })
            .collect(),
    }
}

/// The recommendation report as a table: the total, then one row per
/// ranking variant and per placement.
pub fn recommendations_table(r: &pb::GetRecommendationReportResponse) -> crate::reports::Table {
    let rate = |r: Option<pb::Rate>| format!("{:.5}", r.unwrap_or_default().value);
    let row = |by: &str, r: &pb::ReportRow| {
        let revenue: Vec<String> = r
            .revenue_minor
            .iter()
            .map(|(c, v)| format!("{v} {c}"))
            .collect();
        vec![
            by.to_string(),
            r.key.clone(),
            r.impressions.to_string(),
            r.clicked.to_string(),
            r.added_to_cart.to_string(),
            r.purchased.to_string(),
            rate(r.ctr),
            rate(r.conversion),
            revenue.join(" "),
        ]
    };
    let mut rows: Vec<Vec<String>> = r.total.iter().map(|t| row("total", t)).collect();
    rows.extend(r.by_variant.iter().map(|v| row("variant", v)));
    rows.extend(r.by_placement.iter().map(|p| row("placement", p)));
    crate::reports::Table {
        columns: vec![
            "by",
            "key",
            "impressions",
            "clicked",
            "added_to_cart",
            "purchased",
            "ctr",
            "conversion",
            "revenue_minor",
        ],
        rows,
    }
}
