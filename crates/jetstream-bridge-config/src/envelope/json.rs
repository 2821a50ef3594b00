//! A small compact-JSON writer that cannot fail.
//!
//! `serde_json`'s writers return `Result` because a `Serialize` impl or an `io::Write` may fail;
//! for our wire types neither can happen (strings, integers, timestamps and `Value`s into memory).
//! Writing the few fixed-shape objects by hand lets `to_vec` be infallible without an `unwrap`.
//! The output is byte-identical to `serde_json::to_vec` (compact; `"`, `\` and C0 controls
//! escaped exactly as serde_json and Ruby's `JSON.generate` do; `/`, `<`, `>`, `&`, DEL and
//! non-ASCII written as is), which the envelope tests check against serde_json on arbitrary values.

use serde_json::Value;

/// Where encoded JSON text goes: a `String`, or a byte [`Counter`].
pub(super) trait Sink {
    /// Appends `text`.
    fn push(&mut self, text: &str);
}

impl Sink for String {
    fn push(&mut self, text: &str) {
        self.push_str(text);
    }
}

/// Counts encoded bytes without storing them.
#[derive(Debug, Default)]
pub(super) struct Counter(pub(super) usize);

impl Sink for Counter {
    fn push(&mut self, text: &str) {
        self.0 += text.len();
    }
}

/// Escapes of the C0 control characters, as serde_json writes them (short forms where JSON has
/// one, otherwise `\u00xx` with lowercase hex).
const CONTROL_ESCAPES: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b",
    "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012",
    "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a",
    "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// Writes `text` as a JSON string literal.
pub(super) fn write_str(out: &mut impl Sink, text: &str) {
    out.push("\"");
    let mut start = 0;
    for (index, ch) in text.char_indices() {
        let escape = match ch {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{0}'..='\u{1f}' => CONTROL_ESCAPES[ch as usize],
            _ => continue,
        };
        // `index` and `start` are char boundaries (`start` follows an ASCII character).
        out.push(&text[start..index]);
        out.push(escape);
        start = index + 1;
    }
    out.push(&text[start..]);
    out.push("\"");
}

/// Writes any JSON value, compact, object keys in map order.
pub(super) fn write_value(out: &mut impl Sink, value: &Value) {
    match value {
        Value::Null => out.push("null"),
        Value::Bool(true) => out.push("true"),
        Value::Bool(false) => out.push("false"),
        // `Number`'s `Display` is the formatter serde_json's serializer uses (itoa / shortest
        // round-trip float), and a `Number` is always finite.
        Value::Number(number) => out.push(&number.to_string()),
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.push("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(",");
                }
                write_value(out, item);
            }
            out.push("]");
        }
        Value::Object(map) => {
            out.push("{");
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(",");
                }
                write_str(out, key);
                out.push(":");
                write_value(out, item);
            }
            out.push("}");
        }
    }
}

/// Writes the members of one object in order, tracking the separators.
pub(super) struct ObjectWriter<'a, S: Sink> {
    out: &'a mut S,
    first: bool,
}

impl<'a, S: Sink> ObjectWriter<'a, S> {
    /// Opens the object.
    pub(super) fn new(out: &'a mut S) -> Self {
        out.push("{");
        Self { out, first: true }
    }

    /// Writes `"key":` and returns the sink for the value.
    pub(super) fn key(&mut self, key: &str) -> &mut S {
        if !self.first {
            self.out.push(",");
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(":");
        self.out
    }

    /// A string member.
    pub(super) fn str(&mut self, key: &str, value: &str) {
        let out = self.key(key);
        write_str(out, value);
    }

    /// A member whose value is already JSON text (numbers, `null`).
    pub(super) fn raw(&mut self, key: &str, json: &str) {
        self.key(key).push(json);
    }

    /// An optional string member (`null` when absent).
    pub(super) fn opt_str(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(text) => self.str(key, text),
            None => self.raw(key, "null"),
        }
    }

    /// Closes the object.
    pub(super) fn finish(self) {
        self.out.push("}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(value: &Value) -> String {
        let mut out = String::new();
        write_value(&mut out, value);
        out
    }

    #[test]
    fn matches_serde_json_on_tricky_strings() {
        let mut all_controls = String::new();
        for c in 0u8..=0x7f {
            all_controls.push(char::from(c));
        }
        for text in [
            "",
            "plain",
            "</script><script>alert(1)</script>&amp;",
            "Grüße, 東京 🚀",
            "quote \" backslash \\ slash /",
            "\u{2028}\u{2029}\u{7f}\u{80}\u{9f}",
            &all_controls,
        ] {
            let value = Value::String(text.to_owned());
            assert_eq!(
                encode(&value),
                serde_json::to_string(&value).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn matches_serde_json_on_nested_values() {
        let value = json!({
            "id": 42, "neg": -7, "big": u64::MAX, "f": 19.99, "g": 100.0, "h": 1e20, "tiny": 1.5e-7,
            "nested": {"a": [1, {"b": null}, [], {}], "t": true, "f": false},
            "ключ": "значение"
        });
        assert_eq!(encode(&value), serde_json::to_string(&value).unwrap());
    }

    #[test]
    fn counter_counts_bytes() {
        let value = json!({"é": "🚀"});
        let mut counter = Counter::default();
        write_value(&mut counter, &value);
        assert_eq!(counter.0, encode(&value).len());
    }
}
