//! Source errors, classified by what to do next.

/// The repair of a lost slot or publication (the runtime names the lost range).
const GAP_HINT: &str = "start ficus with --resync: a new slot, and a backfill of the mapped tables";

/// What went wrong with the source, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The connection dropped or the server is busy: back off, reconnect, resume from the slot.
    #[error("{0}")]
    Transient(String),
    /// The server said nothing for longer than it may (a dead route, a dead NAT entry, a proxy
    /// that stopped passing bytes): the connections are not trusted any more; make new ones.
    #[error("{0}")]
    Silent(String),
    /// Something only a person can fix; the slot stays where it is.
    #[error("{message}")]
    Definite {
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: String,
    },
    /// The slot ficus streams from does not exist (any more).
    #[error("replication slot {slot} does not exist: {message}")]
    SlotMissing {
        /// The slot's name.
        slot: String,
        /// What the server said.
        message: String,
    },
    /// The slot was invalidated: the server removed WAL it still needed.
    #[error("replication slot {slot} was invalidated: {message}")]
    SlotInvalidated {
        /// The slot's name.
        slot: String,
        /// What the server said.
        message: String,
    },
    /// The publication the slot decodes with was dropped: the slot cannot decode past the drop.
    #[error("publication {publication} does not exist where the slot decodes: {message}")]
    PublicationMissing {
        /// The publication's name.
        publication: String,
        /// What the server said.
        message: String,
    },
}

impl SourceError {
    /// A definite error.
    pub fn definite(message: impl Into<String>, hint: impl Into<String>) -> SourceError {
        SourceError::Definite {
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Whether reconnecting may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Transient(_) | SourceError::Silent(_))
    }

    /// How to fix it, for definite errors.
    pub fn hint(&self) -> Option<&str> {
        match self {
            SourceError::Definite { hint, .. } => Some(hint),
            SourceError::Transient(_) | SourceError::Silent(_) => None,
            SourceError::SlotMissing { .. }
            | SourceError::SlotInvalidated { .. }
            | SourceError::PublicationMissing { .. } => Some(GAP_HINT),
        }
    }

    /// Classifies an error of an ordinary query.
    pub fn from_sqlx(context: &str, e: sqlx::Error) -> SourceError {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                SourceError::Transient(format!("{context}: {e}"))
            }
            sqlx::Error::Database(db) => {
                if let Some(lost) = lost_slot_or_publication(&format!("ERROR: {}", db.message())) {
                    return lost;
                }
                let code = db.code().unwrap_or_default();
                let hint = match code.as_ref() {
                    "42501" => {
                        "grant the privilege named above to the user in the source url, or run ficus as the tables' owner"
                    }
                    "28P01" | "28000" => "check the user and password in the source url (or FICUS_SOURCE_URL)",
                    "3D000" => "check the database name in the source url",
                    "57P01" | "57P02" | "57P03" | "53300" => return SourceError::Transient(format!("{context}: {e}")),
                    _ => "see the Postgres message above",
                };
                SourceError::definite(format!("{context}: {e}"), hint)
            }
            sqlx::Error::Tls(_) => SourceError::definite(
                format!("{context}: {e}"),
                "check sslmode and sslrootcert in the source url",
            ),
            _ => SourceError::definite(
                format!("{context}: {e}"),
                "check the source url and that the server is up",
            ),
        }
    }

    /// Classifies an error of the replication connection.
    pub fn from_pgwire(e: pgwire_replication::PgWireError) -> SourceError {
        use pgwire_replication::PgWireError as E;
        let text = e.to_string();
        if let E::Server(m) = &e
            && let Some(lost) = lost_slot_or_publication(m)
        {
            return lost;
        }
        match &e {
            E::Io(_) | E::Task(_) => SourceError::Transient(format!("replication connection: {text}")),
            E::Server(m)
                if m.contains("terminating connection")
                    || m.contains("is active for PID")
                    || m.contains("starting up")
                    || m.contains("shutting down")
                    || m.contains("too many clients") =>
            {
                SourceError::Transient(format!("replication connection: {text}"))
            }
            E::Auth(_) => SourceError::definite(
                format!("replication connection: {text}"),
                "check the user and password in the source url; the user needs the REPLICATION attribute",
            ),
            E::Tls(_) => SourceError::definite(
                format!("replication connection: {text}"),
                "check sslmode and sslrootcert in the source url",
            ),
            _ => SourceError::definite(
                format!("replication connection: {text}"),
                "see the Postgres message above",
            ),
        }
    }
}

/// The first name in double quotes in a server message: `replication slot "x" does not exist`.
fn quoted(message: &str) -> Option<String> {
    let start = message.find('"')? + 1;
    let len = message[start..].find('"')?;
    Some(message[start..start + len].to_owned())
}

/// A server message that says the slot or the publication is gone, as its typed error.
fn lost_slot_or_publication(message: &str) -> Option<SourceError> {
    let name = quoted(message)?;
    let message = message.to_owned();
    if message.contains("replication slot") && message.contains("does not exist") {
        Some(SourceError::SlotMissing { slot: name, message })
    } else if message.contains("can no longer get changes from replication slot")
        || message.contains("has been invalidated")
    {
        Some(SourceError::SlotInvalidated { slot: name, message })
    } else if message.contains("publication") && message.contains("does not exist") {
        Some(SourceError::PublicationMissing {
            publication: name,
            message,
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_of_a_lost_slot_or_publication_are_typed() {
        let missing = lost_slot_or_publication("ERROR: replication slot \"ficus\" does not exist");
        assert!(matches!(missing, Some(SourceError::SlotMissing { slot, .. }) if slot == "ficus"));
        let lost = lost_slot_or_publication(
            "ERROR: can no longer get changes from replication slot \"s1\" (DETAIL: This slot has been invalidated because it exceeded the maximum reserved size.)",
        );
        assert!(matches!(lost, Some(SourceError::SlotInvalidated { slot, .. }) if slot == "s1"));
        let publication = lost_slot_or_publication("ERROR: publication \"shop\" does not exist");
        assert!(
            matches!(publication, Some(SourceError::PublicationMissing { publication, .. }) if publication == "shop")
        );
        assert!(lost_slot_or_publication("ERROR: relation \"x\" does not exist").is_none());
    }
}
