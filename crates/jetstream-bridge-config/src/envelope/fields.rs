//! Strict extraction of typed fields from a parsed JSON object, with typed errors.

use serde_json::{Map, Value};

use super::error::json_kind;
use super::{EnvelopeError, Timestamp};

/// Parses bytes that must hold exactly one JSON object.
pub(super) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, EnvelopeError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(EnvelopeError::NotAnObject {
            found: json_kind(&other),
        }),
        // serde_json's syntax errors name a position, never the input text.
        Err(err) => Err(EnvelopeError::NotJson {
            reason: err.to_string(),
        }),
    }
}

/// "expected a string, found a number".
pub(super) fn wrong_type(field: &'static str, expected: &str, found: &Value) -> EnvelopeError {
    EnvelopeError::invalid(
        field,
        format!("expected {expected}, found {}", json_kind(found)),
    )
}

/// Removes `field`; `None` when it is absent or `null` (the gem treats both as "not given").
pub(super) fn take(map: &mut Map<String, Value>, field: &str) -> Option<Value> {
    map.remove(field).filter(|value| !value.is_null())
}

/// A string field; absent or `null` gives `None`.
pub(super) fn take_string(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, EnvelopeError> {
    match take(map, field) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

/// A non-negative integer field; absent or `null` gives `None`.
pub(super) fn take_u64(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<u64>, EnvelopeError> {
    match take(map, field) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type(field, "a non-negative integer", &value)),
    }
}

/// A timestamp field in one of the forms [`Timestamp::parse`] accepts; absent or `null` gives
/// `None`.
pub(super) fn take_timestamp(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<Timestamp>, EnvelopeError> {
    take_string(map, field)?
        .map(|text| Timestamp::parse(&text).map_err(|e| e.in_field(field)))
        .transpose()
}
