//! Errors that point into the user's file.

use std::fmt;
use std::ops::Range;

/// An error in a mapping file, with where it is and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file's path, as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The offending line of the file.
    pub source_line: String,
}

/// A file's text, to turn byte offsets into lines and columns.
#[derive(Clone, Debug)]
pub(crate) struct SourceText {
    pub path: String,
    pub text: String,
}

impl SourceText {
    pub fn error(&self, offset: usize, message: impl Into<String>, hint: Option<String>) -> Diagnostic {
        let mut offset = offset.min(self.text.len());
        // An offset computed inside an escaped string may fall inside a character.
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..].find('\n').map_or(self.text.len(), |i| offset + i);
        Diagnostic {
            file: self.path.clone(),
            line: self.text[..offset].matches('\n').count() + 1,
            column: self.text[line_start..offset].chars().count() + 1,
            message: message.into(),
            hint,
            source_line: self.text[line_start..line_end].to_owned(),
        }
    }

    pub fn error_at(&self, span: &Range<usize>, message: impl Into<String>, hint: Option<String>) -> Diagnostic {
        self.error(span.start, message, hint)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)?;
        let gutter = self.line.to_string();
        writeln!(f, "{gutter} | {}", self.source_line)?;
        write!(
            f,
            "{} | {}^",
            " ".repeat(gutter.len()),
            " ".repeat(self.column.saturating_sub(1))
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n{} = hint: {hint}", " ".repeat(gutter.len()))?;
        }
        Ok(())
    }
}
