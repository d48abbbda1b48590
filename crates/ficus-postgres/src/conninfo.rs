//! The source url: one Postgres URL for both the query and the replication connection.

use std::path::PathBuf;
use std::str::FromStr;

use pgwire_replication::config::{SslMode, TlsConfig};
use sqlx::postgres::PgConnectOptions;

use crate::SourceError;

/// The settings of every session ficus opens: the ISO text forms `ficus_model::value` reads,
/// and `synchronous_commit = local`, so that the commit of a watermark or caught-up message
/// flushes the WAL and the stream brings it at once, even on a source that runs with
/// `synchronous_commit = off` (otherwise each would wait for the WAL writer, 200 ms by default).
/// And TCP keepalives on the server's side of every connection: a ficus that died with its machine,
/// or whose route died, is noticed by the server within about 25 seconds (not the kernel's two
/// hours), which releases its slot and its lease for a standby.
pub const SESSION_SETTINGS: [(&str, &str); 9] = [
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("synchronous_commit", "local"),
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// A parsed `postgres://user:password@host:port/db?sslmode=...` URL.
#[derive(Clone)]
pub struct SourceUrl {
    url: String,
    /// Host name, or a socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    password: String,
    /// Database.
    pub database: String,
    sslmode: String,
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
}

impl std::fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

impl SourceUrl {
    /// Parses a URL; the password may also come from `PGPASSWORD`.
    pub fn parse(url: &str) -> Result<SourceUrl, SourceError> {
        let bad = |why: String| {
            SourceError::definite(
                format!("invalid source url: {why}"),
                "write it as postgres://user:password@host:5432/database?sslmode=prefer",
            )
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad(format!("scheme {:?} is not postgres", parsed.scheme())));
        }
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let query = |key: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let host = query("host")
            .or_else(|| parsed.host_str().map(str::to_owned))
            .unwrap_or_else(|| "localhost".into());
        let user = match parsed.username() {
            "" => std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
            u => decode(u),
        };
        let password = match parsed.password() {
            Some(p) => decode(p),
            None => std::env::var("PGPASSWORD").unwrap_or_default(),
        };
        let database = match parsed.path().trim_start_matches('/') {
            "" => user.clone(),
            d => decode(d),
        };
        let sslmode = query("sslmode").unwrap_or_else(|| "prefer".into());
        if !matches!(
            sslmode.as_str(),
            "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
        ) {
            return Err(bad(format!(
                "unknown sslmode {sslmode:?} (disable, prefer, require, verify-ca, verify-full)"
            )));
        }
        Ok(SourceUrl {
            url: url.to_owned(),
            host,
            port: parsed
                .port()
                .or_else(|| query("port").and_then(|p| p.parse().ok()))
                .unwrap_or(5432),
            user,
            password,
            database,
            sslmode,
            sslrootcert: query("sslrootcert").map(PathBuf::from),
            sslcert: query("sslcert").map(PathBuf::from),
            sslkey: query("sslkey").map(PathBuf::from),
        })
    }

    /// The same URL with `password` instead of the one it carries (a password from a file or
    /// the environment).
    pub fn with_password(mut self, password: String) -> SourceUrl {
        self.password = password;
        self
    }

    /// The password, to find it where it must not be (tests that scan outputs).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The URL without its password, for messages.
    pub fn redacted(&self) -> String {
        format!("postgres://{}@{}:{}/{}", self.user, self.host, self.port, self.database)
    }

    /// Options for ordinary queries.
    pub fn query_options(&self) -> Result<PgConnectOptions, SourceError> {
        let opts = PgConnectOptions::from_str(&self.url).map_err(|e| {
            SourceError::definite(
                format!("invalid source url: {e}"),
                "write it as postgres://user:password@host:5432/database",
            )
        })?;
        // The same text forms as the replication session's (see `replication_config`),
        // so rows read by queries (the backfill) convert like streamed ones.
        // A password from the url, PGPASSWORD, a file or FICUS_SOURCE_PASSWORD; none leaves
        // sqlx to look in ~/.pgpass.
        let opts = if self.password.is_empty() {
            opts
        } else {
            opts.password(&self.password)
        };
        Ok(opts.application_name("ficus").options(SESSION_SETTINGS))
    }

    /// Configuration of the replication connection. Pins the session's output
    /// styles so that values' text forms are the ISO ones `ficus_model::value` reads.
    pub fn replication_config(&self, slot: &str, publication: &str) -> pgwire_replication::ReplicationConfig {
        let mut tls = match self.sslmode.as_str() {
            "disable" => TlsConfig::disabled(),
            "require" => TlsConfig::require(),
            "verify-ca" => TlsConfig::verify_ca(self.sslrootcert.clone()),
            "verify-full" => TlsConfig::verify_full(self.sslrootcert.clone()),
            _ => TlsConfig {
                mode: SslMode::Prefer,
                ..TlsConfig::default()
            },
        };
        if let (Some(cert), Some(key)) = (&self.sslcert, &self.sslkey) {
            tls = tls.with_client_cert(cert.clone(), key.clone());
        }
        pgwire_replication::ReplicationConfig::new(
            &self.host,
            &self.user,
            &self.password,
            &self.database,
            slot,
            publication,
        )
        .with_port(self.port)
        .with_tls(tls)
        .with_options(
            SESSION_SETTINGS
                .iter()
                .map(|(k, v)| format!("-c {k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        )
        .with_application_name("ficus")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_url_parts() {
        let u = SourceUrl::parse("postgres://shop%40x:p%2Fw@db.example:6543/shop?sslmode=require").unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_str(),
                u.host.as_str(),
                u.port,
                u.database.as_str()
            ),
            ("shop@x", "p/w", "db.example", 6543, "shop")
        );
        assert_eq!(u.redacted(), "postgres://shop@x@db.example:6543/shop");
        assert!(SourceUrl::parse("mysql://x/y").is_err());
        assert!(SourceUrl::parse("postgres://x/y?sslmode=sometimes").is_err());
    }
}
