//! `type = "stdout"`: one event per line on standard output.
//!
//! Durable = flushed to the file descriptor: what reads the pipe has it. ficus cannot know what
//! the reader does with it, so stdout is for trying ficus and for piping into a program that
//! acknowledges by its own means.

use std::io::{self, BufWriter, Write};

use async_trait::async_trait;
use serde::Deserialize;

use crate::{Outgoing, Sink, SinkError};

/// `[[sink]] type = "stdout"`: no settings of its own.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

impl StdoutConfig {
    /// The sink.
    pub fn build(&self) -> StdoutSink {
        StdoutSink(BufWriter::with_capacity(64 * 1024, io::stdout()))
    }
}

/// Standard output, one event per line.
pub struct StdoutSink(BufWriter<io::Stdout>);

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, events: &[&Outgoing]) -> Result<(), SinkError> {
        for e in events {
            self.0.write_all(&e.line)?;
            self.0.write_all(b"\n")?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(self.0.flush()?)
    }

    fn reads_attributes(&self) -> bool {
        false
    }
}
