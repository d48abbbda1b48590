//! Source errors, classified by what to do next.

/// What went wrong with the source, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The connection dropped or the server is busy: back off, reconnect, resume from the slot.
    #[error("{0}")]
    Transient(String),
    /// Something only a person can fix; the slot stays where it is.
    #[error("{message}")]
    Definite {
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: String,
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
        matches!(self, SourceError::Transient(_))
    }

    /// How to fix it, for definite errors.
    pub fn hint(&self) -> Option<&str> {
        match self {
            SourceError::Definite { hint, .. } => Some(hint),
            SourceError::Transient(_) => None,
        }
    }

    /// Classifies an error of an ordinary query.
    pub fn from_sqlx(context: &str, e: sqlx::Error) -> SourceError {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                SourceError::Transient(format!("{context}: {e}"))
            }
            sqlx::Error::Database(db) => {
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
