//! The `connections:` section of spoke and hub configs: how a server's listener admits
//! and keeps connections. Every key is optional; the defaults suit a spoke facing a
//! fleet and a hub facing spokes, admins and enrolling envoys.

use std::time::Duration;

use serde::Deserialize;

use super::{AcceptLimits, Http2Limits};
use crate::config::ByteSize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// A TLS handshake that takes longer is dropped.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; connections beyond are closed at once.
    #[serde(default = "default_concurrent_handshakes")]
    pub concurrent_handshakes: usize,
    /// Handshakes in progress at once from one source address.
    #[serde(default = "default_handshakes_per_source")]
    pub handshakes_per_source: usize,
    /// Open connections at most; connections beyond are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// After its handshake, a connection must start a request within this.
    #[serde(default = "default_first_request_timeout", with = "humantime_serde")]
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed (a spoke's
    /// default: two check-in intervals and 30s, so a live envoy keeps its connection; a
    /// hub's: 5m).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// The same for peers without a certificate (they can only enroll).
    #[serde(default = "default_anonymous_idle_timeout", with = "humantime_serde")]
    pub anonymous_idle_timeout: Duration,
    /// Deadline of an ordinary request (bulk calls have their own; see each server's
    /// admission table).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests one connection may have in flight at once.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 flow-control window per stream and per connection (a spoke's default:
    /// 64KiB, small requests keep per-connection memory low; a hub's: 1MiB, raft and
    /// policy messages are large).
    #[serde(default)]
    pub window: Option<ByteSize>,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_concurrent_handshakes() -> usize {
    256
}
fn default_handshakes_per_source() -> usize {
    16
}
fn default_max_connections() -> usize {
    50_000
}
fn default_first_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_anonymous_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_streams() -> u32 {
    32
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: default_handshake_timeout(),
            concurrent_handshakes: default_concurrent_handshakes(),
            handshakes_per_source: default_handshakes_per_source(),
            max_connections: default_max_connections(),
            first_request_timeout: default_first_request_timeout(),
            idle_timeout: None,
            anonymous_idle_timeout: default_anonymous_idle_timeout(),
            request_timeout: default_request_timeout(),
            max_concurrent_streams: default_max_streams(),
            window: None,
        }
    }
}

impl ConnectionsConfig {
    pub fn accept_limits(&self) -> AcceptLimits {
        AcceptLimits {
            handshake_timeout: self.handshake_timeout,
            max_handshakes: self.concurrent_handshakes,
            max_handshakes_per_source: self.handshakes_per_source,
            max_connections: self.max_connections,
        }
    }

    /// The HTTP/2 limits, with this server's defaults for what the file leaves out.
    pub fn http2_limits(&self, default_idle: Duration, default_window: usize) -> Http2Limits {
        Http2Limits {
            max_concurrent_streams: self.max_concurrent_streams,
            window: self.window.map_or(default_window, |w| w.0) as u32,
            max_header_list_size: 16 << 10,
            first_request: self.first_request_timeout,
            idle: self.idle_timeout.unwrap_or(default_idle),
            anonymous_idle: self.anonymous_idle_timeout,
        }
    }

    /// Values types alone cannot check: the key at fault and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let at_least_one = [
            (
                "connections.concurrent_handshakes",
                self.concurrent_handshakes,
            ),
            (
                "connections.handshakes_per_source",
                self.handshakes_per_source,
            ),
            ("connections.max_connections", self.max_connections),
            (
                "connections.max_concurrent_streams",
                self.max_concurrent_streams as usize,
            ),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err((key, "must be at least 1".into()));
        }
        if let Some(w) = self.window
            && (w.0 < 16 << 10 || w.0 > 1 << 30)
        {
            return Err((
                "connections.window",
                "must be between 16KiB and 1GiB".into(),
            ));
        }
        let positive = [
            ("connections.handshake_timeout", self.handshake_timeout),
            (
                "connections.first_request_timeout",
                self.first_request_timeout,
            ),
            (
                "connections.anonymous_idle_timeout",
                self.anonymous_idle_timeout,
            ),
            ("connections.request_timeout", self.request_timeout),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err((key, "must be more than 0s".into()));
        }
        Ok(())
    }
}
