//! Why a sink failed, classified by what the runtime does next.

use std::fmt;
use std::time::Duration;

/// A sink's failure: *transient* (retried with backoff, the events kept) or *definite* (ficus
/// stops, with the sink's name, the cause and a hint; the slot stays where it is).
#[derive(Debug)]
pub struct SinkError {
    sink: String,
    transient: bool,
    message: String,
    hint: Option<String>,
    retry_after: Option<Duration>,
}

impl SinkError {
    /// A failure that may pass: a lost connection, a broker restarting, a timeout, a 5xx.
    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError {
            sink: String::new(),
            transient: true,
            message: message.into(),
            hint: None,
            retry_after: None,
        }
    }

    /// A failure that retrying does not fix: a bad config, refused credentials, a full disk.
    pub fn definite(message: impl Into<String>, hint: impl Into<String>) -> SinkError {
        SinkError {
            sink: String::new(),
            transient: false,
            message: message.into(),
            hint: Some(hint.into()),
            retry_after: None,
        }
    }

    /// The error of the sink `name` (kept when it is named already).
    pub fn named(mut self, name: &str) -> SinkError {
        if self.sink.is_empty() {
            self.sink = name.to_owned();
        }
        self
    }

    /// The same failure, as definite (a transient one that lasted too long).
    pub fn into_definite(mut self, hint: impl Into<String>) -> SinkError {
        self.transient = false;
        self.hint.get_or_insert_with(|| hint.into());
        self
    }

    /// The same failure, with what to do about it (a transient failure that may not pass).
    pub fn with_hint(mut self, hint: impl Into<String>) -> SinkError {
        self.hint = Some(hint.into());
        self
    }

    /// The sink asks not to be tried again before this long (an HTTP `Retry-After`).
    pub fn with_retry_after(mut self, after: Duration) -> SinkError {
        self.retry_after = Some(after);
        self
    }

    /// How long the sink asked to wait before the next try, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The sink's name.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// What happened, without the sink's name.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How to fix it.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sink.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "sink {}: {}", self.sink, self.message)
        }
    }
}

impl std::error::Error for SinkError {}

/// An IO error of a file or stream sink: definite, with a hint for the usual causes.
impl From<std::io::Error> for SinkError {
    fn from(e: std::io::Error) -> SinkError {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "give ficus's user write access to the path, then start ficus again"
            }
            std::io::ErrorKind::StorageFull => "make room on the disk, then start ficus again",
            _ => "fix the cause, then start ficus again",
        };
        SinkError::definite(
            e.to_string(),
            format!("{hint}: nothing that was not durable was acknowledged"),
        )
    }
}

/// A url (or a comma-separated list of them) as messages show it: without a password.
pub(crate) fn shown_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.find('@')) {
            (Some(scheme), Some(at)) if at > scheme && !u[scheme + 3..at].contains('/') => {
                format!("{}***{}", &u[..scheme + 3], &u[at..])
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            shown_url("nats://u:p@h:4222,nats://h2:4222"),
            "nats://***@h:4222,nats://h2:4222"
        );
        assert_eq!(shown_url("https://u:p@h/x"), "https://***@h/x");
        assert_eq!(shown_url("https://h/x@y"), "https://h/x@y");
        assert_eq!(
            shown_url("redis://:secret@127.0.0.1:6379"),
            "redis://***@127.0.0.1:6379"
        );
    }
}
