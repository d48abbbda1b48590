//! The lease, as `ficus run` uses it: taken before anything else touches the source (a standby
//! opens no replication connection, creates nothing, writes no sink), waited for as a standby
//! while another ficus holds it, and watched while streaming — lost, the run stops so that a
//! standby can take the slot.

use std::time::Duration;

use ficus_postgres::lease::LeaseConnection;
use ficus_postgres::{SourceError, SourceUrl};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::RunError;
use crate::backoff::Retry;
use crate::health::{Health, Role};

/// How often a standby tries to take the lease, and the holder makes sure it still has it.
const POLL: Duration = Duration::from_secs(1);
/// The holder's check gets an answer within this, or the lease is taken to be lost.
const ANSWER: Duration = Duration::from_secs(5);

/// The lease, held.
pub(super) struct Lease(LeaseConnection);

/// Takes the lease on `slot`, waiting as a standby while another ficus holds it; `None` when
/// shutdown is asked for first.
pub(super) async fn take(
    url: &SourceUrl,
    slot: &str,
    health: &Health,
    give_up: Option<Duration>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Lease>, RunError> {
    let mut conn: Option<LeaseConnection> = None;
    let mut retry = Retry::new("connecting to the source", give_up);
    let mut said: Option<i32> = None;
    loop {
        if *shutdown.borrow() {
            return Ok(None);
        }
        let wait = match try_take(url, slot, &mut conn).await {
            Ok(Taken::Yes) => {
                if said.is_some() {
                    info!(%slot, "took the lease: this ficus streams now");
                }
                return Ok(conn.take().map(Lease));
            }
            Ok(Taken::No(holder)) => {
                let pid = holder.as_ref().map(|h| h.pid);
                if said != Some(pid.unwrap_or(0)) {
                    said = Some(pid.unwrap_or(0));
                    let by = holder.as_ref().map_or("another ficus".to_owned(), ToString::to_string);
                    warn!(%slot, "standby: the lease on the slot is held by {by}; waiting to take over");
                }
                health.update(|s| s.lease_holder = holder.map(|h| h.to_string()));
                health.role(Role::Standby);
                retry.succeeded();
                POLL
            }
            Err(e) if e.is_transient() => {
                conn = None;
                let said = e.to_string();
                let wait = retry.failed(e)?;
                warn!(error = %said, retry_in = ?wait, "taking the lease failed; retrying");
                wait
            }
            Err(e) => return Err(e.into()),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Ok(None),
        }
    }
}

enum Taken {
    Yes,
    No(Option<ficus_postgres::lease::Leaseholder>),
}

async fn try_take(url: &SourceUrl, slot: &str, conn: &mut Option<LeaseConnection>) -> Result<Taken, SourceError> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(LeaseConnection::open(url, slot).await?),
    };
    if c.try_take().await? {
        return Ok(Taken::Yes);
    }
    Ok(Taken::No(c.holder().await?))
}

impl Lease {
    /// Resolves once the lease is lost: its connection failed, or did not answer in time.
    pub async fn lost(&mut self) -> SourceError {
        loop {
            tokio::time::sleep(POLL).await;
            match tokio::time::timeout(ANSWER, self.0.alive()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return e,
                Err(_) => {
                    return SourceError::Silent(format!(
                        "the lease connection did not answer within {}s",
                        ANSWER.as_secs()
                    ));
                }
            }
        }
    }

    /// Gives the lease back.
    pub async fn release(self) {
        self.0.close().await;
    }
}
