//! Deserialising a config object while remembering which key failed.
//!
//! `serde_json` names a *missing* field in its message but not the field whose value has the
//! wrong type ("invalid type: string \"x\", expected usize"). Going through this small
//! [`serde::Deserializer`] over the parsed JSON object, which hands serde one entry at a time,
//! tells us the key of the entry that failed, so every error can name the file and the key.

use alloc::borrow::ToOwned;
use alloc::string::{String, ToString};
use core::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::ConfigError;

/// Parses `json` as an object and deserialises `T` from it; errors name `file` and the key.
pub(crate) fn from_json<T: DeserializeOwned>(file: &str, json: &str) -> Result<T, ConfigError> {
    let object = parse_object(file, json)?;
    T::deserialize(ObjectDeserializer(&object)).map_err(|e| ConfigError::Parse {
        file: file.to_owned(),
        key: e.key,
        message: e.message,
    })
}

/// Parses `json`, which must be one JSON object.
pub(crate) fn parse_object(file: &str, json: &str) -> Result<Map<String, Value>, ConfigError> {
    let value: Value = serde_json::from_str(json).map_err(|e| ConfigError::Parse {
        file: file.to_owned(),
        key: None,
        message: e.to_string(),
    })?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(ConfigError::Parse {
            file: file.to_owned(),
            key: None,
            message: alloc::format!("expected a JSON object, found {}", kind(&other)),
        }),
    }
}

/// A word for the JSON type of `value`, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The error of [`ObjectDeserializer`]: a message and, where known, the key it concerns.
#[derive(Debug)]
pub(crate) struct FieldError {
    key: Option<String>,
    message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "key `{key}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl core::error::Error for FieldError {}

impl de::Error for FieldError {
    fn custom<M: fmt::Display>(message: M) -> Self {
        Self {
            key: None,
            message: message.to_string(),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            key: Some(field.to_owned()),
            message: "required key is missing".to_owned(),
        }
    }
}

/// Deserialises a struct from a JSON object, entry by entry.
struct ObjectDeserializer<'de>(&'de Map<String, Value>);

impl<'de> de::Deserializer<'de> for ObjectDeserializer<'de> {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        visitor.visit_map(Entries {
            iter: self.0.iter(),
            pending: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

/// The object's entries; `pending` is the entry whose key serde has read and whose value is next.
struct Entries<'de> {
    iter: serde_json::map::Iter<'de>,
    pending: Option<(&'de String, &'de Value)>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = FieldError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FieldError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.pending = Some((key, value));
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, FieldError> {
        let (key, value) = self.pending.take().ok_or_else(|| {
            <FieldError as de::Error>::custom("a value was asked for before its key")
        })?;
        seed.deserialize(value).map_err(|e| FieldError {
            key: Some(key.clone()),
            message: e.to_string(),
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// A boolean flag that published configs sometimes write as `null` (SDXL's
/// `"upcast_attention": null`): `null` reads as diffusers' default, `false`.
pub(crate) fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    use serde::Deserialize as _;
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}
