//! What the coordinator refuses before a message reaches the fleet task:
//! TLS handshakes (unknown CA, expired or bad certificates), agent streams
//! without a certificate, oversized messages, floods of reports or host key
//! requests. Each refusal is counted by reason (`dfleet_refused_total`) and
//! logged with who and why; a flood is logged at most once per reason every
//! [`LOG_EVERY_MS`], with the number of refusals since the last line, so a
//! hostile client cannot fill the log.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The shortest time between two log lines of the same reason.
pub const LOG_EVERY_MS: i64 = 10_000;

/// Why something was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// A client certificate the cluster CA did not sign.
    TlsUnknownCa,
    /// A client certificate outside its validity.
    TlsExpired,
    /// A client certificate that is malformed or otherwise unusable.
    TlsBadCertificate,
    /// Any other failed handshake: not TLS, a protocol error, too slow.
    TlsHandshake,
    /// An agent stream opened without a node certificate.
    NoCertificate,
    /// A message larger than the coordinator accepts.
    MessageTooLarge,
    /// Reports beyond a stream's rate.
    ReportFlood,
    /// Host key requests beyond a stream's rate.
    HostKeyFlood,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::TlsUnknownCa,
        Reason::TlsExpired,
        Reason::TlsBadCertificate,
        Reason::TlsHandshake,
        Reason::NoCertificate,
        Reason::MessageTooLarge,
        Reason::ReportFlood,
        Reason::HostKeyFlood,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TlsUnknownCa => "tls_unknown_ca",
            Reason::TlsExpired => "tls_expired",
            Reason::TlsBadCertificate => "tls_bad_certificate",
            Reason::TlsHandshake => "tls_handshake",
            Reason::NoCertificate => "no_certificate",
            Reason::MessageTooLarge => "message_too_large",
            Reason::ReportFlood => "report_flood",
            Reason::HostKeyFlood => "host_key_flood",
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    total: u64,
    /// Refusals not logged since the last line.
    unlogged: u64,
    last_logged_ms: Option<i64>,
}

/// The refusal counters, shared by the listeners, the stream tasks and
/// `/metrics`.
#[derive(Debug, Default)]
pub struct Guard {
    tallies: Mutex<BTreeMap<Reason, Tally>>,
}

impl Guard {
    /// Counts a refusal and logs it, unless a line for the same reason was
    /// written less than [`LOG_EVERY_MS`] ago.
    pub fn refuse(&self, reason: Reason, detail: &str, now_ms: i64) {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let t = tallies.entry(reason).or_default();
        t.total += 1;
        t.unlogged += 1;
        if t.last_logged_ms
            .is_some_and(|last| now_ms - last < LOG_EVERY_MS)
        {
            return;
        }
        let earlier = t.unlogged - 1;
        t.unlogged = 0;
        t.last_logged_ms = Some(now_ms);
        drop(tallies);
        if earlier > 0 {
            tracing::warn!(
                reason = reason.as_str(),
                also_refused = earlier,
                "refused: {detail}"
            );
        } else {
            tracing::warn!(reason = reason.as_str(), "refused: {detail}");
        }
    }

    /// How many refusals of each reason so far (every reason listed).
    pub fn counts(&self) -> Vec<(Reason, u64)> {
        let tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        Reason::ALL
            .iter()
            .map(|r| (*r, tallies.get(r).map_or(0, |t| t.total)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_counts_and_floods_log_once_per_interval() {
        let g = Guard::default();
        for i in 0..5 {
            g.refuse(Reason::ReportFlood, "cn01", 1000 + i);
        }
        g.refuse(Reason::TlsExpired, "127.0.0.1:700", 1000);
        let counts: BTreeMap<_, _> = g.counts().into_iter().collect();
        assert_eq!(counts[&Reason::ReportFlood], 5);
        assert_eq!(counts[&Reason::TlsExpired], 1);
        assert_eq!(counts[&Reason::NoCertificate], 0);
        let t = &g.tallies.lock().unwrap()[&Reason::ReportFlood];
        assert_eq!((t.unlogged, t.last_logged_ms), (4, Some(1000)));
    }
}
