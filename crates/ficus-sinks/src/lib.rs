//! Sinks: where events go.
//!
//! Every sink receives each event as one JSON line (a CloudEvent in
//! structured mode). `write` may buffer; `flush` makes everything written so
//! far durable, and only after every sink's `flush` does the runtime
//! acknowledge the source.
//!
//! At-least-once: after a crash or restart a sink may see an event again; it
//! has the same id.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A sink that failed.
#[derive(Debug, thiserror::Error)]
#[error("sink {name}: {source}")]
pub struct SinkError {
    name: String,
    #[source]
    source: io::Error,
}

/// One configured sink.
pub enum Sink {
    /// Standard output, one event per line.
    Stdout(BufWriter<io::Stdout>),
    /// A file of one event per line, appended to, fsynced on flush.
    Jsonl {
        /// The file's path.
        path: PathBuf,
        /// The open file.
        file: BufWriter<File>,
    },
}

impl Sink {
    /// The stdout sink.
    pub fn stdout() -> Sink {
        Sink::Stdout(BufWriter::with_capacity(64 * 1024, io::stdout()))
    }

    /// A jsonl sink appending to `path` (created with its directory when absent).
    pub fn jsonl(path: &Path) -> Result<Sink, SinkError> {
        let err = |source| SinkError {
            name: format!("jsonl {}", path.display()),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        Ok(Sink::Jsonl {
            path: path.to_owned(),
            file: BufWriter::with_capacity(256 * 1024, file),
        })
    }

    /// The sink's name in messages.
    pub fn name(&self) -> String {
        match self {
            Sink::Stdout(_) => "stdout".into(),
            Sink::Jsonl { path, .. } => format!("jsonl {}", path.display()),
        }
    }

    /// Writes one event line (without its newline); may buffer.
    pub fn write(&mut self, line: &[u8]) -> Result<(), SinkError> {
        let r = match self {
            Sink::Stdout(w) => w.write_all(line).and_then(|_| w.write_all(b"\n")),
            Sink::Jsonl { file, .. } => file.write_all(line).and_then(|_| file.write_all(b"\n")),
        };
        r.map_err(|source| SinkError {
            name: self.name(),
            source,
        })
    }

    /// Writes event lines, each with its newline; may buffer.
    pub fn write_lines(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        let r = match self {
            Sink::Stdout(w) => w.write_all(lines),
            Sink::Jsonl { file, .. } => file.write_all(lines),
        };
        r.map_err(|source| SinkError {
            name: self.name(),
            source,
        })
    }

    /// Makes every written event durable: stdout is flushed, a file is flushed and fsynced.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        let r = match self {
            Sink::Stdout(w) => w.flush(),
            Sink::Jsonl { file, .. } => file.flush().and_then(|_| file.get_ref().sync_data()),
        };
        r.map_err(|source| SinkError {
            name: self.name(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_appends_lines_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("ficus-sink-{}", std::process::id()));
        let path = dir.join("out/events.jsonl");
        let mut sink = Sink::jsonl(&path).unwrap();
        sink.write(br#"{"id":"1"}"#).unwrap();
        sink.flush().unwrap();
        drop(sink);
        let mut sink = Sink::jsonl(&path).unwrap();
        sink.write(br#"{"id":"2"}"#).unwrap();
        sink.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\":\"1\"}\n{\"id\":\"2\"}\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
