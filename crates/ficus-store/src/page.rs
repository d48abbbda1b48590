//! A page of stored events as a replay reads it: every line of the page in one value.
//!
//! Read row by row, a page of 1,000 events is 1,000 rows handed from the database driver to the
//! runtime one at a time, each of its values copied on the way: that, not the events, is what a
//! replay spent its time on. The backends build the page in the database instead (SQLite's and
//! Postgres' `string_agg`), each event as its numbers and lengths, then its type, aggregate and
//! line — no separator that the text could contain — and ficus cuts it up here. The lines that go
//! out are slices of the page's buffer: no copy per event.

use std::ops::Range;

use bytes::Bytes;

/// What a backend selects for an event of a page: `position,time_us,lsn,` and the byte lengths
/// of type, aggregate and event, each followed by a comma, then the three texts; `length` is the
/// backend's byte length of a column.
pub(crate) fn paged_event(length: impl Fn(&str) -> String) -> String {
    format!(
        "concat(position, ',', time_us, ',', lsn, ',', {}, ',', {}, ',', {}, ',', type, aggregate, event)",
        length("type"),
        length("aggregate"),
        length("event")
    )
}

/// A page of stored events: their lines in one buffer, each with what the line does not say.
#[derive(Clone, Debug, Default)]
pub struct LinePage {
    text: Bytes,
    lines: Vec<PagedLine>,
}

/// One stored event of a [`LinePage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagedLine {
    /// Its global position, from 1.
    pub position: i64,
    /// The event's time, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// The commit LSN it comes from.
    pub lsn: u64,
    ty: Range<usize>,
    aggregate: Range<usize>,
    event: Range<usize>,
}

impl LinePage {
    /// The page a backend's `string_agg` of [`paged_event`] built (none: no event).
    pub(crate) fn parse(text: Option<String>) -> Result<LinePage, String> {
        let Some(text) = text else {
            return Ok(LinePage::default());
        };
        let mut lines = Vec::with_capacity(1_000);
        let mut at = 0;
        while at < text.len() {
            let mut numbers = [0i64; 6];
            for n in &mut numbers {
                let end = text[at..]
                    .find(',')
                    .map(|i| at + i)
                    .ok_or_else(|| format!("a page of events ends in the numbers of an event at byte {at}"))?;
                *n = text[at..end]
                    .parse()
                    .map_err(|_| format!("{:?} at byte {at} of a page of events is not a number", &text[at..end]))?;
                at = end + 1;
            }
            let [position, time_micros, lsn, ty, aggregate, event] = numbers;
            let mut next = |len: i64| -> Result<Range<usize>, String> {
                let end = usize::try_from(len).ok().and_then(|l| at.checked_add(l));
                match end {
                    Some(end) if end <= text.len() && text.is_char_boundary(end) => {
                        let range = at..end;
                        at = end;
                        Ok(range)
                    }
                    _ => Err(format!("the event at position {position} does not fit its page")),
                }
            };
            lines.push(PagedLine {
                position,
                time_micros,
                lsn: lsn as u64,
                ty: next(ty)?,
                aggregate: next(aggregate)?,
                event: next(event)?,
            });
        }
        // The page's query reads its events in position order; the aggregate over them does not
        // promise to keep it (an ORDER BY in it sorts them again: a quarter of a replay's time).
        // A sort of what is in order already is one pass.
        lines.sort_by_key(|l| l.position);
        Ok(LinePage {
            text: Bytes::from(text),
            lines,
        })
    }

    /// Its events, in position order.
    pub fn lines(&self) -> &[PagedLine] {
        &self.lines
    }

    /// An event's type.
    pub fn ty(&self, line: &PagedLine) -> &str {
        self.str(&line.ty)
    }

    /// The aggregate an event's stream belongs to.
    pub fn aggregate(&self, line: &PagedLine) -> &str {
        self.str(&line.aggregate)
    }

    /// An event's line, as it was delivered.
    pub fn event(&self, line: &PagedLine) -> &str {
        self.str(&line.event)
    }

    /// An event's line, sharing the page's buffer.
    pub fn event_bytes(&self, line: &PagedLine) -> Bytes {
        self.text.slice(line.event.clone())
    }

    fn str(&self, range: &Range<usize>) -> &str {
        // The buffer was a `String`, and `parse` cut it at character boundaries only.
        std::str::from_utf8(&self.text[range.clone()]).expect("a page is cut at character boundaries")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_cut_into_its_events_by_their_lengths_whatever_their_text_holds() {
        let line = r#"{"a":"1,2,é"}"#;
        let text = format!(
            "7,1700,4096,4,6,{},Paidpublic{line}8,1701,4097,1,1,2,Xy{{}}",
            line.len()
        );
        let page = LinePage::parse(Some(text)).unwrap();
        let got: Vec<(i64, i64, u64, &str, &str, &str)> = page
            .lines()
            .iter()
            .map(|l| {
                (
                    l.position,
                    l.time_micros,
                    l.lsn,
                    page.ty(l),
                    page.aggregate(l),
                    page.event(l),
                )
            })
            .collect();
        assert_eq!(
            got,
            [(7, 1700, 4096, "Paid", "public", line), (8, 1701, 4097, "X", "y", "{}")]
        );
        assert_eq!(page.event_bytes(&page.lines()[1]), "{}");
        let swapped = "8,1701,4097,1,1,2,Xy{}7,1700,4096,1,1,2,Ab[]".to_owned();
        let page = LinePage::parse(Some(swapped)).unwrap();
        let order: Vec<(i64, &str)> = page.lines().iter().map(|l| (l.position, page.event(l))).collect();
        assert_eq!(
            order,
            [(7, "[]"), (8, "{}")],
            "in position order, whatever the aggregate's"
        );
        assert!(LinePage::parse(None).unwrap().lines().is_empty());
    }

    #[test]
    fn a_damaged_page_is_an_error_not_a_panic() {
        for damaged in [
            "7,1700,4096,4,6,14,Paidpublic{\"a\"",
            "7,1700,4096,4,6,-1,Paidpublic{}",
            "7,1700,4096,4,6,1,Paidpublicé",
            "7,1700,x,4,6,2,Paidpublic{}",
            "7,1700",
        ] {
            assert!(LinePage::parse(Some(damaged.to_owned())).is_err(), "{damaged}");
        }
    }
}
