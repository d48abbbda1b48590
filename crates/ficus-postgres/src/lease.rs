//! The lease: which of several `ficus run` of one slot streams. A session-level advisory lock on
//! the source, keyed by the slot's name, held by a connection of its own: the server releases it
//! when that connection ends — the process died, its machine died, or the route to it did — so a
//! standby that polls for it takes over within a poll.
//!
//! A standby's connection is named `ficus standby SLOT` (`application_name`), the holder's
//! `ficus lease SLOT`: `ficus status` finds both from `pg_stat_activity` and `pg_locks`.

use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::{SourceError, SourceUrl};

/// The lock's key: a 64-bit hash of the slot's name (`$1`).
const KEY: &str = "hashtextextended('ficus lease ' || $1, 0)";

/// A connection to the source that holds, or waits for, the lease.
pub struct LeaseConnection {
    conn: PgConnection,
    slot: String,
}

/// Who holds the lease, or waits for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaseholder {
    /// The backend of its lease connection on the server.
    pub pid: i32,
    /// The client's address (none over a Unix socket).
    pub client_addr: Option<String>,
    /// Since when that connection is open (the server's clock).
    pub since: Option<String>,
}

impl std::fmt::Display for Leaseholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the ficus whose lease connection is pid {} on the server", self.pid)?;
        if let Some(addr) = &self.client_addr {
            write!(f, " (from {addr})")?;
        }
        if let Some(since) = &self.since {
            write!(f, ", connected since {since}")?;
        }
        Ok(())
    }
}

fn application(role: &str, slot: &str) -> String {
    // application_name holds 63 bytes.
    let mut name = format!("ficus {role} {slot}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

impl LeaseConnection {
    /// Opens the connection the lease is taken (and held) on.
    pub async fn open(url: &SourceUrl, slot: &str) -> Result<LeaseConnection, SourceError> {
        let options = url.query_options()?.application_name(&application("standby", slot));
        let (shown, at) = (url.redacted(), format!("{}:{}", url.host, url.port));
        let conn = tokio::time::timeout(crate::catalog::CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| {
                SourceError::Transient(format!(
                    "connecting to {shown}: {at} did not answer within {:?}",
                    crate::catalog::CONNECT_TIMEOUT
                ))
            })?
            .map_err(|e| crate::catalog::connect_error(&shown, &at, e))?;
        let mut lease = LeaseConnection {
            conn,
            slot: slot.to_owned(),
        };
        // A dead man's switch on the server's side: the holder speaks every second; a connection
        // silent for 10 s (a hung proxy that keeps TCP alive) is ended by the server, and the
        // lease with it. Postgres 14+; older servers rely on TCP keepalives alone.
        if let Err(e) = sqlx::query("set idle_session_timeout = '10s'")
            .execute(&mut lease.conn)
            .await
        {
            tracing::debug!(error = %e, "the server has no idle_session_timeout (before Postgres 14)");
        }
        Ok(lease)
    }

    /// Takes the lease if no one holds it.
    pub async fn try_take(&mut self) -> Result<bool, SourceError> {
        let taken: bool = sqlx::query_scalar(&format!("select pg_try_advisory_lock({KEY})"))
            .bind(&self.slot)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| SourceError::from_sqlx("taking the lease", e))?;
        if taken {
            sqlx::query(&format!(
                "set application_name = '{}'",
                application("lease", &self.slot).replace('\'', "''")
            ))
            .execute(&mut self.conn)
            .await
            .map_err(|e| SourceError::from_sqlx("taking the lease", e))?;
        }
        Ok(taken)
    }

    /// Whether the connection (and so the lease) is still there: a round trip.
    pub async fn alive(&mut self) -> Result<(), SourceError> {
        self.conn
            .ping()
            .await
            .map_err(|e| SourceError::from_sqlx("the lease connection", e))
    }

    /// Who holds the lease now, seen from this connection.
    pub async fn holder(&mut self) -> Result<Option<Leaseholder>, SourceError> {
        holder_on(&mut self.conn, &self.slot).await
    }

    /// Gives the lease back and closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

const HOLDER: &str = "select a.pid, a.client_addr::text, a.backend_start::text
    from pg_locks l join pg_stat_activity a on a.pid = l.pid
    where l.locktype = 'advisory' and l.granted and l.objsubid = 1
      and l.database = (select oid from pg_database where datname = current_database())
      and l.classid::bigint = ((KEY >> 32) & 4294967295) and l.objid::bigint = (KEY & 4294967295)";

type HolderRow = (i32, Option<String>, Option<String>);

fn leaseholder((pid, client_addr, since): HolderRow) -> Leaseholder {
    Leaseholder {
        pid,
        client_addr,
        since,
    }
}

async fn holder_on(conn: &mut PgConnection, slot: &str) -> Result<Option<Leaseholder>, SourceError> {
    let row: Option<HolderRow> = sqlx::query_as(&HOLDER.replace("KEY", KEY))
        .bind(slot)
        .fetch_optional(conn)
        .await
        .map_err(|e| SourceError::from_sqlx("reading who holds the lease", e))?;
    Ok(row.map(leaseholder))
}

/// Who holds the lease on `slot`, and who waits for it (standbys).
pub async fn holders(pool: &PgPool, slot: &str) -> Result<(Option<Leaseholder>, Vec<Leaseholder>), SourceError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| SourceError::from_sqlx("reading who holds the lease", e))?;
    let holder = holder_on(&mut conn, slot).await?;
    let standbys: Vec<HolderRow> = sqlx::query_as(
        "select pid, client_addr::text, backend_start::text from pg_stat_activity
         where application_name = $1 and datname = current_database() order by backend_start",
    )
    .bind(application("standby", slot))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| SourceError::from_sqlx("reading the standbys", e))?;
    Ok((holder, standbys.into_iter().map(leaseholder).collect()))
}
