//! Which characters an owner label may hold. Labels are shown to people (inspect, `lockbroker
//! locks`, the status page, the CLI's waiting line), so a label may not carry what a terminal
//! or a text renderer acts on: C0 and C1 control characters, DEL (escape sequences, newlines
//! that forge rows, bells), and the bidirectional overrides, isolates and marks that reorder
//! what is shown. Keys are bytes and may hold anything: whoever prints one escapes it.

/// Whether `c` may not appear in an owner label (and is escaped wherever text is printed).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// Why `label` is not a valid owner label's text, if it is not.
pub fn label_problem(label: &str) -> Option<&'static str> {
    label
        .chars()
        .any(is_unsafe_char)
        .then_some("owner label holds a control or bidi-override character")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_del_c1_and_bidi_controls_are_unsafe() {
        for c in [
            '\n', '\r', '\x1b', '\x07', '\x7f', '\u{9b}', '\u{202E}', '\u{2066}',
        ] {
            assert!(is_unsafe_char(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '日', '@', ':', '\u{1F512}'] {
            assert!(!is_unsafe_char(c), "{c:?}");
        }
        assert_eq!(label_problem("worker-7@host-3"), None);
        assert!(label_problem("x\nroot / ops-approved").is_some());
    }
}
