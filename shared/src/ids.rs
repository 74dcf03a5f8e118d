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
            "id {} contains the control character {:?}",
            quote(id),
            c
        ));
    }
    if id.trim() != id {
        return Some(format!(
            "id {} has leading or trailing white space",
            quote(id)
        ));
    }
    None
}

/// Characters of a caller's input quoted in a message at most: an error answer (a gRPC
/// `grpc-message` trailer, a log line) never repeats megabytes of what it refuses.
pub const QUOTED_CHARS: usize = 40;

/// `input` quoted for an error message: Rust-escaped, cut to [`QUOTED_CHARS`] characters with its
/// length in bytes said when it was longer.
pub fn quote(input: &str) -> String {
    match input.char_indices().nth(QUOTED_CHARS) {
        None => format!("{input:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &input[..cut], input.len()),
    }
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
        let long_with_control = format!("{}\n", "z".repeat(3 << 20));
        let problem = id_problem(&long_with_control).unwrap();
        assert!(problem.len() < 200, "{} bytes", problem.len());
        let too_long = "y".repeat(MAX_ID_BYTES + 1);
        assert!(id_problem(&too_long).unwrap().contains("257 bytes"));
    }

    #[test]
    fn quoted_input_is_cut_and_its_length_said() {
        assert_eq!(quote("US"), "\"US\"");
        let country = "Ü".repeat(3 << 20);
        let quoted = quote(&country);
        assert!(quoted.len() < 200, "{} bytes", quoted.len());
        assert!(
            quoted.ends_with(&format!("({} bytes)", country.len())),
            "{quoted}"
        );
        assert_eq!(
            quote(&"a".repeat(QUOTED_CHARS)),
            format!("{:?}", "a".repeat(QUOTED_CHARS))
        );
    }
}
