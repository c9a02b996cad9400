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
