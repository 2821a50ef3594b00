//! Unique, lowercase names shared by the NATS and PostgreSQL helpers.

/// Length of [`unique_token`]: 16 base-36 digits, about 82 random bits.
const TOKEN_LEN: usize = 16;

/// Returns 16 random characters from `[a-z0-9]`, unique for all practical purposes.
///
/// Valid in stream names, durable names, subject tokens and PostgreSQL identifiers. (A raw
/// `nuid` is mixed-case, and lowercasing its sequential part could make two names collide.)
///
/// # Examples
///
/// ```
/// let token = jetstream_bridge_testkit::unique_token();
/// assert_eq!(token.len(), 16);
/// assert!(token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
/// assert_ne!(token, jetstream_bridge_testkit::unique_token());
/// ```
#[must_use]
pub fn unique_token() -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n: u128 = rand::random();
    let mut out = String::with_capacity(TOKEN_LEN);
    for _ in 0..TOKEN_LEN {
        out.push(char::from(DIGITS[(n % 36) as usize]));
        n /= 36;
    }
    out
}

/// `base` followed by `_` and a [`unique_token`]; panics if `base` is not `[a-z0-9_-]+`.
#[track_caller]
pub(crate) fn unique_name(base: &str) -> String {
    assert!(
        !base.is_empty()
            && base
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'),
        "testkit name base {base:?} must be non-empty and use only [a-z0-9_-] \
         (no dots, wildcards or uppercase), so the result is valid as a stream name, a durable \
         name and a subject token"
    );
    format!("{base}_{}", unique_token())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid() {
        let a = unique_name("orders");
        let b = unique_name("orders");
        assert_ne!(a, b);
        assert!(a.starts_with("orders_"));
        assert_eq!(a.len(), "orders_".len() + TOKEN_LEN);
    }

    #[test]
    #[should_panic(expected = "must be non-empty")]
    fn dotted_base_is_rejected() {
        let _ = unique_name("orders.created");
    }
}
