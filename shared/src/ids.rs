//! Member and item identifiers.
//!
//! Ids are opaque UTF-8 strings chosen by the service that owns the catalog and the members. The
//! platform accepts any id of 1 to [`MAX_ID_BYTES`] bytes without control characters (so ids survive
//! logs, CSV, Kafka keys and Redis keys unchanged); everything else is refused with the reason.

/// Longest id accepted, in bytes (the online API's limit too).
pub const MAX_ID_BYTES: usize = 256;

/// Why an id is not acceptable, or `None` when it is.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("empty id".to_string());
    }
    if id.len() > MAX_ID_BYTES {
        return Some(format!(
            "id is {} bytes long, at most {MAX_ID_BYTES} are allowed",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Some(format!(
            "id {:?} contains the control character {:?}",
            truncate_for_message(id),
            c
        ));
    }
    if id.trim() != id {
        return Some(format!(
            "id {:?} has leading or trailing white space",
            truncate_for_message(id)
        ));
    }
    None
}

fn truncate_for_message(id: &str) -> String {
    id.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids_and_refuses_malformed_ones() {
        for ok in [
            "1",
            "member-42",
            "tt0114709",
            "ユーザー",
            &"x".repeat(MAX_ID_BYTES),
        ] {
            assert_eq!(id_problem(ok), None, "{ok}");
        }
        let cases = [
            ("", "empty"),
            ("a\nb", "control"),
            ("a\tb", "control"),
            (" a", "white space"),
            ("a ", "white space"),
        ];
        for (bad, why) in cases {
            let problem = id_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(problem.contains(why), "{bad:?}: {problem}");
        }
        let too_long = "y".repeat(MAX_ID_BYTES + 1);
        assert!(id_problem(&too_long).unwrap().contains("257 bytes"));
    }
}
