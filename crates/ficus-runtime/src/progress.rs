//! Progress on a terminal for `ficus replay` and `ficus remap`, as the backfill has: a bar when
//! the end is known, a counter when it is not; nothing at all when stderr is not a terminal (a
//! log file, a pipe, CI).

use indicatif::{ProgressBar, ProgressStyle};

/// Progress through store positions.
pub(crate) struct Positions {
    bar: Option<ProgressBar>,
    from: i64,
}

impl Positions {
    /// Through positions `from + 1 ..= to` (`to`: `None` when the end is not known).
    pub fn new(what: &str, from: i64, to: Option<i64>) -> Positions {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Positions { bar: None, from };
        }
        let bar = match to {
            Some(to) => ProgressBar::new(to.saturating_sub(from).max(0) as u64).with_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg}: {pos} ({per_sec})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_message(what.to_owned());
        Positions { bar: Some(bar), from }
    }

    /// Everything up to `position` is done.
    pub fn at(&self, position: i64) {
        if let Some(bar) = &self.bar {
            let done = position.saturating_sub(self.from).max(0) as u64;
            if bar.length().is_some_and(|len| done > len) {
                bar.set_length(done); // --follow: the end moved
            }
            bar.set_position(done);
        }
    }

    /// Done: the bar stays on the screen with its last count.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
