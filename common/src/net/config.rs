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
    /// Open connections at most; connections beyond are closed at once. Unset: 50,000,
    /// or what the process's open-file limit holds when that is less.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Open connections from one source address at most (envoys behind one NAT share
    /// an address: raise it for them); beyond, closed at once.
    #[serde(default = "default_connections_per_source")]
    pub connections_per_source: usize,
    /// Open connections without a client certificate from one source address.
    #[serde(default = "default_anonymous_per_source")]
    pub anonymous_connections_per_source: usize,
    /// Open connections without a client certificate in all (enrolling envoys, health
    /// probes, reflection).
    #[serde(default = "default_max_anonymous")]
    pub max_anonymous_connections: usize,
    /// A connection without a client certificate is closed this long after its
    /// handshake, whatever it is doing (a stream it holds included): nobody anonymous
    /// keeps a connection.
    #[serde(default = "default_anonymous_max_age", with = "humantime_serde")]
    pub anonymous_max_age: Duration,
    /// Any connection is told to go away (HTTP/2 GOAWAY: calls in flight finish, for up
    /// to `max_connection_age_grace`) about this long after its handshake, jittered by
    /// ±10 %, so long-lived connections are renewed; an envoy reconnects at its next
    /// call, resuming its TLS session. Unset: never.
    #[serde(default, with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
    /// How long a connection told to go away at its maximum age may finish its calls
    /// (a held stream included) before it is closed.
    #[serde(default = "default_max_connection_age_grace", with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
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
/// The connection cap when none is configured and the open-file limit allows it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Descriptors a server keeps beside its listeners' connections: files, its database,
/// its own calls to other nodes.
pub const DESCRIPTOR_RESERVE: u64 = 1024;
fn default_connections_per_source() -> usize {
    4096
}
fn default_anonymous_per_source() -> usize {
    256
}
fn default_max_anonymous() -> usize {
    4096
}
fn default_anonymous_max_age() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connection_age_grace() -> Duration {
    Duration::from_secs(30)
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
            max_connections: None,
            connections_per_source: default_connections_per_source(),
            anonymous_connections_per_source: default_anonymous_per_source(),
            max_anonymous_connections: default_max_anonymous(),
            anonymous_max_age: default_anonymous_max_age(),
            max_connection_age: None,
            max_connection_age_grace: default_max_connection_age_grace(),
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
            max_connections: self.max_connections(),
            max_per_source: self.connections_per_source,
            max_anonymous_per_source: self.anonymous_connections_per_source,
            max_anonymous: self.max_anonymous_connections,
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    /// Raises the process's open-file limit to its hard limit, then makes sure it holds
    /// the connections of `listeners` listeners under these limits: a configured
    /// `max_connections` it cannot hold is refused (the message names both numbers and
    /// the two ways out); the default is lowered to fit, and said so.
    pub fn fit_descriptors(&mut self, listeners: u64) -> Result<(), crate::Error> {
        let limit = crate::procfs::raise_fd_limit();
        if limit == 0 {
            return Ok(());
        }
        let room = limit.saturating_sub(DESCRIPTOR_RESERVE) / listeners.max(1);
        match self.max_connections {
            Some(max) if max as u64 > room => Err(crate::Error::Config {
                file: "connections".into(),
                key: "connections.max_connections".into(),
                why: format!(
                    "{max} connections on each of {listeners} listeners need {} open files, \
                     and this process may open {limit} (its hard RLIMIT_NOFILE): raise the \
                     limit (LimitNOFILE= in the systemd unit, `ulimit -Hn`) or lower \
                     max_connections",
                    max as u64 * listeners + DESCRIPTOR_RESERVE
                ),
            }),
            Some(_) => Ok(()),
            None if (DEFAULT_MAX_CONNECTIONS as u64) <= room => Ok(()),
            None => {
                let fit = room.max(1) as usize;
                tracing::warn!(
                    open_files = limit,
                    max_connections = fit,
                    "the open-file limit holds fewer than the default 50,000 connections per \
                     listener: serving at most {fit} (raise LimitNOFILE to serve more)"
                );
                self.max_connections = Some(fit);
                Ok(())
            }
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
            anonymous_max_age: self.anonymous_max_age,
            max_age: self.max_connection_age,
            max_age_grace: self.max_connection_age_grace,
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
            ("connections.max_connections", self.max_connections()),
            (
                "connections.connections_per_source",
                self.connections_per_source,
            ),
            (
                "connections.anonymous_connections_per_source",
                self.anonymous_connections_per_source,
            ),
            (
                "connections.max_anonymous_connections",
                self.max_anonymous_connections,
            ),
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
            ("connections.anonymous_max_age", self.anonymous_max_age),
            (
                "connections.max_connection_age",
                self.max_connection_age.unwrap_or(Duration::MAX),
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err((key, "must be more than 0s".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit this process may raise itself to decides: a configured cap above it
    /// refuses to start with both numbers; the default shrinks to fit.
    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        let limit = crate::procfs::raise_fd_limit();
        assert!(limit > DESCRIPTOR_RESERVE, "open files: {limit}");
        let mut configured = ConnectionsConfig {
            max_connections: Some(limit as usize),
            ..Default::default()
        };
        let err = configured.fit_descriptors(1).unwrap_err().to_string();
        assert!(
            err.contains("max_connections") && err.contains(&limit.to_string()),
            "{err}"
        );
        let mut fits = ConnectionsConfig {
            max_connections: Some(16),
            ..Default::default()
        };
        fits.fit_descriptors(2).unwrap();
        assert_eq!(fits.max_connections(), 16);
        let mut default = ConnectionsConfig::default();
        default.fit_descriptors(10).unwrap();
        let room = ((limit - DESCRIPTOR_RESERVE) / 10) as usize;
        assert_eq!(default.max_connections(), DEFAULT_MAX_CONNECTIONS.min(room));
    }
}
