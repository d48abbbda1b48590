//! `type = "jsonl"`: a file of one event per line, appended to.
//!
//! Durable = written and `fsync`ed (`fdatasync`): the events survive a crash of ficus and of the
//! machine. A line cut short by a crash can end the file; readers skip a last line that does not
//! parse. The fsync runs on a blocking thread, so mapping goes on meanwhile.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;

use crate::{Outgoing, Sink, SinkError};

/// `[[sink]] type = "jsonl"`.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// The file (relative to the config's directory); created with its directory when absent.
    pub path: PathBuf,
}

impl JsonlConfig {
    /// The sink, writing to `path` resolved against `dir`; opens nothing yet.
    pub fn build(&self, dir: &Path) -> JsonlSink {
        let path = if self.path.is_absolute() {
            self.path.clone()
        } else {
            dir.join(&self.path)
        };
        JsonlSink { path, file: None }
    }
}

/// A file of one event per line.
pub struct JsonlSink {
    path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl JsonlSink {
    fn open(&mut self) -> Result<&mut BufWriter<File>, SinkError> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.err(e))?;
            drop_cut_line(&file).map_err(|e| self.err(e))?;
            self.file = Some(BufWriter::with_capacity(256 * 1024, file));
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn err(&self, e: std::io::Error) -> SinkError {
        let e = SinkError::from(e);
        SinkError::definite(
            format!("{}: {}", self.path.display(), e.message()),
            e.hint().unwrap_or_default(),
        )
    }
}

/// A crash can leave the file ending in a line cut short: an event that was not durable, so not
/// acknowledged, and delivered again. It is cut off, so that the next line does not run into it
/// (and two events become one line no reader takes).
fn drop_cut_line(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if end == len && part.last() == Some(&b'\n') {
            return Ok(());
        }
        if let Some(i) = part.iter().rposition(|b| *b == b'\n') {
            return file.set_len(start + i as u64 + 1);
        }
        end = start;
    }
    file.set_len(0)
}

#[async_trait]
impl Sink for JsonlSink {
    async fn write(&mut self, events: &[&Outgoing]) -> Result<(), SinkError> {
        let file = self.open()?;
        let mut result = Ok(());
        for e in events {
            result = file.write_all(&e.line).and_then(|_| file.write_all(b"\n"));
            if result.is_err() {
                break;
            }
        }
        result.map_err(|e| self.err(e))
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let synced = match file.flush().and_then(|_| file.get_ref().try_clone()) {
            Ok(fd) => tokio::task::spawn_blocking(move || fd.sync_data())
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(e) => Err(e),
        };
        synced.map_err(|e| self.err(e))
    }

    fn reads_attributes(&self) -> bool {
        false
    }

    /// The file can be appended to, or created (nothing is written).
    async fn health(&mut self) -> Result<(), SinkError> {
        if self.path.exists() {
            return OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map(drop)
                .map_err(|e| self.err(e));
        }
        // The nearest directory that exists must take a new file.
        let mut dir = self.path.parent();
        while let Some(d) = dir {
            if d.as_os_str().is_empty() {
                dir = Some(Path::new("."));
                break;
            }
            if d.exists() {
                break;
            }
            dir = d.parent();
        }
        let dir = dir.unwrap_or(Path::new("."));
        tempfile::tempfile_in(dir).map(drop).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::event;

    #[tokio::test]
    async fn appends_lines_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = JsonlConfig {
            path: "out/events.jsonl".into(),
        };
        let mut sink = config.build(dir.path());
        sink.health().await.unwrap();
        let one = Outgoing::new(event("A", "1"));
        sink.write(&[&one]).await.unwrap();
        sink.flush().await.unwrap();
        drop(sink);
        let mut sink = config.build(dir.path());
        let two = Outgoing::new(event("B", "2"));
        sink.write(&[&two]).await.unwrap();
        sink.flush().await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("out/events.jsonl")).unwrap();
        let types: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(types, ["A", "B"]);
    }

    #[tokio::test]
    async fn a_line_cut_short_by_a_crash_is_cut_off_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let config = JsonlConfig { path: path.clone() };
        for (before, after) in [
            ("{\"id\":\"1\"}\n{\"id\":\"2", "{\"id\":\"1\"}\n"),
            ("{\"id\":\"1\"}\n", "{\"id\":\"1\"}\n"),
            ("{\"id\":\"1", ""),
            ("", ""),
        ] {
            std::fs::write(&path, before).unwrap();
            let mut sink = config.build(dir.path());
            let e = Outgoing::new(event("A", "x"));
            sink.write(&[&e]).await.unwrap();
            sink.flush().await.unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(
                text,
                format!("{after}{}\n", String::from_utf8_lossy(&e.line)),
                "{before:?}"
            );
        }
        // A cut line longer than a read of the tail.
        let long = format!("{{\"id\":\"1\"}}\n{{\"id\":\"{}", "x".repeat(200_000));
        std::fs::write(&path, long).unwrap();
        let mut sink = config.build(dir.path());
        sink.write(&[]).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"id\":\"1\"}\n");
    }

    #[tokio::test]
    async fn a_directory_it_may_not_write_is_definite() {
        let config = JsonlConfig {
            path: "/proc/ficus/events.jsonl".into(),
        };
        let err = config.build(Path::new("/")).health().await.unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("/proc/ficus/events.jsonl"), "{err}");
    }
}
