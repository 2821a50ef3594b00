//! Credential masking for free text (error messages written into a report).

use jetstream_bridge_config::redact_url;

/// Masks the credentials of every URL-like word (`scheme://…`) in `text` with the config
/// crate's [`redact_url`] rules; other words are kept as they are.
pub(crate) fn mask_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '(' | ')' | '[' | ']' | ',') {
            push_word(&mut out, &word);
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    push_word(&mut out, &word);
    out
}

fn push_word(out: &mut String, word: &str) {
    if word.contains("://") {
        out.push_str(&redact_url(word));
    } else {
        out.push_str(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_url_and_keeps_the_rest() {
        assert_eq!(
            mask_credentials("failed: nats://u:p@h:4222, (postgres://app:pw@db/x?sslmode=require)"),
            "failed: nats://u:***@h:4222, (postgres://app:***@db/x)"
        );
        assert_eq!(mask_credentials("token nats://tok@h"), "token nats://***@h");
        assert_eq!(mask_credentials("no urls here"), "no urls here");
        assert_eq!(mask_credentials(""), "");
    }
}
