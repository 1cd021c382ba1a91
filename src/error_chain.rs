//! Turning an error and its causes into the one line a person reads.
//!
//! Two habits make a naive walk of [`Error::source`] say the same thing several times: our own
//! `thiserror` messages embed `{source}` so that `{e}` alone is complete, and transports (tonic,
//! hyper, bollard) wrap one io error in several layers that each repeat its text. Printing only
//! `{e}` is no fix either: a foreign error (a `kube::Error`, a hyper error) keeps its useful part
//! in its sources. So every place that shows an error to an operator (the `podagent check` lines,
//! the fatal errors of the binary, the daemon's startup retries, the runtime's connect attempts)
//! goes through [`render`], which keeps every cause, in order, and says each once.
//!
//! It is a module of its own because it belongs to none of those edges: each of them would
//! otherwise grow its own walk, and they would drift apart.

use std::error::Error;

/// `error` followed by each of its causes, `: `-separated, leaving out a cause whose text has
/// already been said.
pub fn render(error: &dyn Error) -> String {
    render_causes(error.to_string(), error.source())
}

/// `head` followed by `cause` and its own causes, each said once. For errors whose `Display` is
/// not meant for a person (a gRPC status prints its code and a `Debug` of its source), so the
/// caller says what stands first.
pub(crate) fn render_causes(head: String, cause: Option<&(dyn Error + 'static)>) -> String {
    let mut rendered = head;
    let causes = std::iter::successors(cause, |&error| error.source());
    for cause in causes {
        append(&mut rendered, &cause.to_string());
    }
    rendered
}

/// Adds `cause` unless it was already said. A cause that begins by repeating the end of what was
/// said ("transport error", then "transport error: connection refused") adds only its tail.
fn append(rendered: &mut String, cause: &str) {
    if cause.is_empty() || rendered.contains(cause) {
        return;
    }
    let overlap = cause
        .match_indices(": ")
        .map(|(end, _)| end)
        .filter(|&end| {
            let repeated = &cause[..end];
            rendered
                .strip_suffix(repeated)
                .is_some_and(|before| before.is_empty() || before.ends_with(": "))
        })
        .max();
    match overlap {
        Some(end) => rendered.push_str(&cause[end..]),
        None if rendered.is_empty() => rendered.push_str(cause),
        None => {
            rendered.push_str(": ");
            rendered.push_str(cause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// An error with a fixed message and an optional cause, to build chains of any shape.
    #[derive(Debug)]
    struct Link {
        message: &'static str,
        source: Option<Box<Link>>,
    }

    impl fmt::Display for Link {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.message)
        }
    }

    impl Error for Link {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref().map(|link| link as _)
        }
    }

    /// The chain `messages[0]` caused by `messages[1]` caused by …
    fn chain(messages: &[&'static str]) -> Link {
        let mut links = messages.iter().rev();
        let innermost = Link {
            message: links.next().copied().unwrap_or_default(),
            source: None,
        };
        links.fold(innermost, |source, message| Link {
            message,
            source: Some(Box::new(source)),
        })
    }

    #[test]
    fn every_cause_is_kept_in_order() {
        assert_eq!(
            render(&chain(&[
                "list pods",
                "client error (Connect)",
                "tcp connect error"
            ])),
            "list pods: client error (Connect): tcp connect error"
        );
    }

    #[test]
    fn a_cause_the_message_already_embeds_is_not_repeated() {
        assert_eq!(
            render(&chain(&[
                "reading state file a.json: Permission denied (os error 13)",
                "Permission denied (os error 13)",
            ])),
            "reading state file a.json: Permission denied (os error 13)"
        );
    }

    #[test]
    fn one_io_error_wrapped_in_several_layers_is_said_once() {
        let rendered = render(&chain(&[
            "No such file or directory (os error 2)",
            "transport error",
            "No such file or directory (os error 2)",
            "No such file or directory (os error 2)",
        ]));
        assert_eq!(
            rendered,
            "No such file or directory (os error 2): transport error"
        );
    }

    #[test]
    fn adjacent_duplicates_collapse() {
        assert_eq!(render(&chain(&["a", "b", "b", "b", "c"])), "a: b: c");
    }

    #[test]
    fn a_cause_repeating_what_was_said_adds_only_its_tail() {
        assert_eq!(
            render(&chain(&[
                "API server https://k:6443 is unreachable: client error (Connect)",
                "client error (Connect): tcp connect error",
                "tcp connect error: Connection refused (os error 111)",
            ])),
            "API server https://k:6443 is unreachable: client error (Connect): tcp connect \
             error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn overlap_only_counts_whole_segments() {
        // "b" ends what was said, but only as part of the segment "ab": "b: c" is news.
        assert_eq!(render(&chain(&["ab", "b: c"])), "ab: b: c");
    }

    #[test]
    fn empty_messages_leave_no_stray_separators() {
        assert_eq!(render(&chain(&["", "b", "", "c"])), "b: c");
        assert_eq!(render_causes(String::new(), None), "");
    }

    #[test]
    fn a_chosen_head_replaces_the_outer_display() {
        let status = chain(&[
            "code: 'Unavailable', source: …",
            "transport error",
            "refused",
        ]);
        assert_eq!(
            render_causes("refused".to_owned(), status.source()),
            "refused: transport error"
        );
    }
}
