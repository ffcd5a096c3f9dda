//! Text from elsewhere — keys, owner labels, principals, peers — as the CLI prints it: every
//! character a terminal acts on (controls, DEL, C1, bidi overrides: `proto::text`) is shown
//! escaped (`\n`, `\u{1b}`), so no key or label can move the cursor, forge a row or retitle
//! the terminal.

use std::borrow::Cow;

use lockbroker_proto::text::is_unsafe_char;

/// `s` with every unsafe character escaped (borrowed when there is none).
pub(crate) fn shown(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if is_unsafe_char(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn what_a_terminal_acts_on_is_escaped() {
        assert_eq!(shown("jobs/nightly"), "jobs/nightly");
        assert_eq!(shown("x\nroot / ops-approved"), "x\\nroot / ops-approved");
        assert_eq!(shown("\x1b]0;pwned\x07"), "\\u{1b}]0;pwned\\u{7}");
        assert_eq!(shown("a\u{202E}b"), "a\\u{202e}b");
    }
}
