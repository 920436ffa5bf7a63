//! A task's input kept as MessagePack bytes while its request is decoded: the input is
//! transcoded from the body (JSON or MessagePack) as it is read, so a large input costs about
//! its own size, not a generic value tree tens of times larger.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A task's input as the MessagePack bytes of its value, whatever the encoding of its request:
/// what the orchestrator stores and hands to the kind, which decodes it by the strict rules.
///
/// It deserializes from any value (read through the strict deserializer, its nesting and number
/// of values are bounded as every body's are).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawInput(Vec<u8>);

impl RawInput {
    /// The MessagePack bytes of the input.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The MessagePack bytes of the input, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl<'de> Deserialize<'de> for RawInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut bytes = Vec::new();
        Transcode { out: &mut bytes }.deserialize(deserializer)?;
        Ok(Self(bytes))
    }
}

/// Writes the value it visits to `out` as MessagePack.
struct Transcode<'a> {
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Transcode<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// `rmp`'s writers into a `Vec` fail only when memory does; the error is kept all the same.
fn written<T, W: fmt::Display, E: de::Error>(result: Result<T, W>) -> Result<(), E> {
    result
        .map(|_| ())
        .map_err(|e| E::custom(format_args!("cannot re-encode the input: {e}")))
}

/// A count of elements as MessagePack takes it (at most `u32::MAX`; bodies hold far fewer).
fn length<E: de::Error>(count: usize) -> Result<u32, E> {
    u32::try_from(count).map_err(|_| E::custom("too many elements to re-encode"))
}

impl<'de> Visitor<'de> for Transcode<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        written(rmp::encode::write_bool(self.out, v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        written(rmp::encode::write_sint(self.out, v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        written(rmp::encode::write_uint(self.out, v))
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<(), E> {
        written(rmp::encode::write_f32(self.out, v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        written(rmp::encode::write_f64(self.out, v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        written(rmp::encode::write_str(self.out, v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        written(rmp::encode::write_bin(self.out, v))
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        written(rmp::encode::write_nil(self.out))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        written(rmp::encode::write_nil(self.out))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    /// A MessagePack extension, as `rmp_serde` presents it: the tuple `(tag, data)`.
    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_tuple(2, Extension { out: self.out })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // MessagePack gives an array's length up front: the elements go straight after their
        // header. JSON does not: they are written apart, then behind the header.
        if let Some(expected) = seq.size_hint() {
            written(rmp::encode::write_array_len(self.out, length(expected)?))?;
            let mut count = 0;
            while seq
                .next_element_seed(Transcode { out: self.out })?
                .is_some()
            {
                count += 1;
            }
            return matches_hint(count, expected);
        }
        let mut items = Vec::new();
        let mut count = 0;
        while seq
            .next_element_seed(Transcode { out: &mut items })?
            .is_some()
        {
            count += 1;
        }
        written(rmp::encode::write_array_len(self.out, length(count)?))?;
        self.out.extend_from_slice(&items);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some(expected) = map.size_hint() {
            written(rmp::encode::write_map_len(self.out, length(expected)?))?;
            let count = transcode_entries(&mut map, self.out)?;
            return matches_hint(count, expected);
        }
        let mut entries = Vec::new();
        let count = transcode_entries(&mut map, &mut entries)?;
        written(rmp::encode::write_map_len(self.out, length(count)?))?;
        self.out.extend_from_slice(&entries);
        Ok(())
    }
}

/// Writes a map's entries to `out`; returns how many there were.
fn transcode_entries<'de, A: MapAccess<'de>>(
    map: &mut A,
    out: &mut Vec<u8>,
) -> Result<usize, A::Error> {
    let mut count = 0;
    while map.next_key_seed(Transcode { out: &mut *out })?.is_some() {
        map.next_value_seed(Transcode { out: &mut *out })?;
        count += 1;
    }
    Ok(count)
}

/// The length written up front must be the number of elements that came.
fn matches_hint<E: de::Error>(count: usize, expected: usize) -> Result<(), E> {
    if count == expected {
        Ok(())
    } else {
        Err(E::custom(format_args!(
            "{count} elements where the header announced {expected}"
        )))
    }
}

/// Writes a MessagePack extension, read as the tuple `(tag, data)`.
struct Extension<'a> {
    out: &'a mut Vec<u8>,
}

impl<'de> Visitor<'de> for Extension<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a MessagePack extension")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let tag: i8 = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let data: serde_bytes::ByteBuf = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        written(rmp::encode::write_ext_meta(
            self.out,
            length(data.len())?,
            tag,
        ))?;
        self.out.extend_from_slice(&data);
        Ok(())
    }
}
