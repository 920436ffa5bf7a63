//! Strict decoding of what comes from outside Chorus: task requests, control messages and kinds'
//! inputs, in JSON and MessagePack alike.
//!
//! serde's derived `Deserialize` accepts a struct from a sequence of its fields in order (and a
//! field named by its index), so `"options": [1]` would mean `max_attempts: 1`. Here a body is
//! first read into a MessagePack value (depth-limited in both encodings), and the target is
//! deserialized from that value by [`Strict`], a deserializer that gives structs, struct
//! variants and maps only from maps with string keys, and refuses every field the target does
//! not know (serde asks to ignore those through `deserialize_ignored_any`, refused here).
//! `serde_path_to_error` names the field an error happened at (`options.max_attempts`).
//!
//! Internal messages (subtasks, results, what Redis holds) are written by Chorus as maps and stay
//! on `rmp_serde` directly: their decode is on the hot path, and docs/protocol.md lets a newer
//! version add fields to them.

use std::{fmt, vec};

use rmpv::Value;
use serde::de::{
    self, value::StringDeserializer, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess,
    IntoDeserializer, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use crate::error::ProtocolError;

/// Deepest nesting of arrays and maps accepted in a decoded body: what the recursion limit of
/// `serde_json` (128) lets through, applied to MessagePack too, so that a depth bomb is an
/// error, not a stack overflow.
pub const MAX_DEPTH: usize = 127;

/// A strict decode that failed: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictError {
    /// Dotted path of the field (`options.max_attempts`, `items[2].id`); empty at the root.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl StrictError {
    /// The error with its path under `root` (`input` gives `input.parts: ...`, and
    /// `input: ...` at the root).
    pub fn under(&self, root: &str) -> String {
        match (root.is_empty(), self.path.is_empty()) {
            (true, true) => self.message.clone(),
            (true, false) => format!("{}: {}", self.path, self.message),
            (false, true) => format!("{root}: {}", self.message),
            (false, false) if self.path.starts_with('[') => {
                format!("{root}{}: {}", self.path, self.message)
            }
            (false, false) => format!("{root}.{}: {}", self.path, self.message),
        }
    }
}

impl fmt::Display for StrictError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.under(""))
    }
}

impl std::error::Error for StrictError {}

/// Reads a MessagePack body as a value: one value, nested at most [`MAX_DEPTH`] deep, nothing
/// after it.
///
/// # Errors
/// Bytes that are not one MessagePack value, nest deeper, or go on after it.
pub fn read_msgpack(body: &[u8]) -> Result<Value, StrictError> {
    let mut rest = body;
    // rmpv counts two steps per array or map level, and up to three for a string inside.
    let value = rmpv::decode::read_value_with_max_depth(&mut rest, 2 * MAX_DEPTH + 3)
        .map_err(|e| root_error(format!("not MessagePack: {e}")))?;
    if !rest.is_empty() {
        return Err(root_error(format!(
            "{} bytes follow the MessagePack value",
            rest.len()
        )));
    }
    Ok(value)
}

/// Reads a JSON body as a value (`serde_json` limits its nesting to [`MAX_DEPTH`]).
///
/// # Errors
/// Text that is not one JSON value, or nests deeper.
pub fn read_json(body: &[u8]) -> Result<Value, StrictError> {
    serde_json::from_slice(body).map_err(|e| root_error(format!("not JSON: {e}")))
}

/// Deserializes `T` from `value` by the strict rules of this module.
///
/// # Errors
/// A struct given as anything but a map, a field `T` does not know, a key that is not a string,
/// a value of the wrong type, a missing field: with the path of the field.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, StrictError> {
    serde_path_to_error::deserialize(Strict(value)).map_err(|e| {
        let path = e.path().to_string();
        StrictError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().0,
        }
    })
}

/// Decodes a public message body: its root must be a map (every public message is one, and
/// internally tagged enums such as `Control` would otherwise take their tag from an array's first
/// element), then [`from_value`].
///
/// # Errors
/// As [`read_msgpack`] or [`read_json`], a root that is not a map, and as [`from_value`]; the
/// error is [`ProtocolError::Decode`] with the field's path.
pub fn decode_message<T: DeserializeOwned>(value: Value) -> Result<T, ProtocolError> {
    if !value.is_map() {
        let error = root_error(format!("expected a map, got {}", describe(&value)));
        return Err(ProtocolError::Decode(error.to_string()));
    }
    from_value(value).map_err(|e| ProtocolError::Decode(e.to_string()))
}

fn root_error(message: String) -> StrictError {
    StrictError {
        path: String::new(),
        message,
    }
}

/// What a value is, for an error message.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a string",
        Value::Binary(_) => "binary data",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "a MessagePack extension",
    }
}

/// The error of [`Strict`]: a message; the path is added by `serde_path_to_error`.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self(message.to_string())
    }
}

fn expected_map(value: &Value) -> Error {
    Error(format!("expected a map, got {}", describe(value)))
}

/// A value deserialized by the strict rules (see the module's documentation).
pub struct Strict(pub Value);

impl<'de> Deserializer<'de> for Strict {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Nil => visitor.visit_unit(),
            Value::Boolean(b) => visitor.visit_bool(b),
            Value::Integer(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => visitor.visit_u64(u),
                (None, Some(i)) => visitor.visit_i64(i),
                (None, None) => Err(Error(format!("integer {n} is out of range"))),
            },
            Value::F32(x) => visitor.visit_f32(x),
            Value::F64(x) => visitor.visit_f64(x),
            Value::String(s) => match s.into_str() {
                Some(s) => visitor.visit_string(s),
                None => Err(Error("string is not valid UTF-8".into())),
            },
            Value::Binary(bytes) => visitor.visit_byte_buf(bytes),
            Value::Array(items) => visit_array(items, visitor),
            Value::Map(entries) => visit_map(entries, visitor),
            // As rmpv presents an extension: a newtype of `(tag, data)`, so that an `rmpv::Value`
            // target keeps it.
            Value::Ext(tag, data) => visitor.visit_newtype_struct(Strict(Value::Array(vec![
                Value::from(tag),
                Value::Binary(data),
            ]))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Nil => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Map(entries) => visit_map(entries, visitor),
            other => Err(expected_map(&other)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(_) => visitor.visit_enum(Variant {
                name: self.0,
                value: None,
            }),
            Value::Map(mut entries) if entries.len() == 1 => {
                let (name, value) = entries.remove(0);
                visitor.visit_enum(Variant {
                    name,
                    value: Some(value),
                })
            }
            other => Err(Error(format!(
                "expected a variant name or a map of one variant, got {}",
                describe(&other)
            ))),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(_) => self.deserialize_any(visitor),
            other => Err(Error(format!(
                "expected a field name (a string), got {}",
                describe(&other)
            ))),
        }
    }

    /// serde ignores the value of a field its target does not know: refused.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error("unknown field".into()))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn is_human_readable(&self) -> bool {
        // As rmp_serde, which decoded kinds' inputs before: a kind's types see the same form.
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct
    }
}

fn visit_array<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, Error> {
    let len = items.len();
    let mut seq = Items {
        items: items.into_iter(),
    };
    let value = visitor.visit_seq(&mut seq)?;
    if seq.items.len() == 0 {
        Ok(value)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements"))
    }
}

fn visit_map<'de, V: Visitor<'de>>(
    entries: Vec<(Value, Value)>,
    visitor: V,
) -> Result<V::Value, Error> {
    let len = entries.len();
    let mut map = Entries {
        entries: entries.into_iter(),
        value: None,
    };
    let value = visitor.visit_map(&mut map)?;
    if map.entries.len() == 0 {
        Ok(value)
    } else {
        Err(de::Error::invalid_length(len, &"fewer entries"))
    }
}

struct Items {
    items: vec::IntoIter<Value>,
}

impl<'de> SeqAccess<'de> for Items {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.items
            .next()
            .map(|item| seed.deserialize(Strict(item)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Entries {
    entries: vec::IntoIter<(Value, Value)>,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(Key(key)).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(Strict(value)),
            None => Err(Error("a map value was asked for before its key".into())),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// A map key: a string, also for targets (such as `rmpv::Value` or a map of integers) that would
/// take any value.
struct Key(Value);

impl<'de> Deserializer<'de> for Key {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(_) => Strict(self.0).deserialize_any(visitor),
            other => Err(Error(format!(
                "expected a string as map key, got {}",
                describe(&other)
            ))),
        }
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// An enum variant: its name and, for a map of one variant, its value.
struct Variant {
    name: Value,
    value: Option<Value>,
}

impl<'de> EnumAccess<'de> for Variant {
    type Error = Error;
    type Variant = VariantValue;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, VariantValue), Error> {
        let name = match self.name.as_str() {
            Some(name) => name.to_owned(),
            None => {
                return Err(Error(format!(
                    "expected a variant name (a string), got {}",
                    describe(&self.name)
                )))
            }
        };
        let deserializer: StringDeserializer<Error> = name.into_deserializer();
        Ok((seed.deserialize(deserializer)?, VariantValue(self.value)))
    }
}

/// The value of an enum variant, if it came in a map.
struct VariantValue(Option<Value>);

impl<'de> VariantAccess<'de> for VariantValue {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            None | Some(Value::Nil) => Ok(()),
            Some(other) => Err(Error(format!(
                "expected no value for this variant, got {}",
                describe(&other)
            ))),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        match self.0 {
            Some(value) => seed.deserialize(Strict(value)),
            None => Err(Error("this variant needs a value".into())),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Array(items)) => visit_array(items, visitor),
            Some(other) => Err(Error(format!(
                "expected an array for this variant, got {}",
                describe(&other)
            ))),
            None => Err(Error("this variant needs an array".into())),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Map(entries)) => visit_map(entries, visitor),
            Some(other) => Err(expected_map(&other)),
            None => Err(Error("this variant needs a map".into())),
        }
    }
}

#[cfg(test)]
mod tests;
