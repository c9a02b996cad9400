//! Monitoring's domain in its proto form: the rules' severities and
//! phases as the API's alert fields.

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
