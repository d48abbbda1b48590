//! Per-sink routing: which event types a sink gets.

use glob::Pattern;

use crate::SinkError;

/// The event types a sink takes: `events = ["OrderPaid", "Order*"]`; all when empty.
#[derive(Clone, Debug, Default)]
pub struct Routes(Vec<Pattern>);

impl Routes {
    /// Routes from the patterns of a sink's `events` (`*` and `?` wildcards, `[...]` classes).
    pub fn new(patterns: &[String]) -> Result<Routes, SinkError> {
        patterns
            .iter()
            .map(|p| {
                Pattern::new(p).map_err(|e| {
                    SinkError::definite(
                        format!("events: {p:?} is not a pattern: {}", e.msg),
                        "write event types, with * for any run of characters: events = [\"OrderPaid\", \"Customer*\"]",
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(Routes)
    }

    /// Whether the sink takes events of this type. ficus's own events (`ficus.gap`) go to every
    /// sink: whoever reads a sink must learn of a gap.
    pub fn accepts(&self, ty: &str) -> bool {
        self.0.is_empty() || ty.starts_with("ficus.") || self.0.iter().any(|p| p.matches(ty))
    }

    /// Whether the sink takes every event.
    pub fn all(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_wildcards() {
        let routes = Routes::new(&["OrderPaid".into(), "Customer*".into()]).unwrap();
        assert!(routes.accepts("OrderPaid"));
        assert!(!routes.accepts("OrderPlaced"));
        assert!(routes.accepts("CustomerRegistered"));
        assert!(routes.accepts("ficus.gap"));
        assert!(Routes::default().accepts("anything"));
        let err = Routes::new(&["Order[".into()]).unwrap_err();
        assert!(err.to_string().contains("\"Order[\" is not a pattern"), "{err}");
    }
}
