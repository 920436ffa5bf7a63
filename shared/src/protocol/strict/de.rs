//! The strict deserializer: a wrapper over a format's own deserializer (`rmp_serde`,
//! `serde_json`) that reads straight from the body's bytes, without a generic value in between.
//!
//! Every request of the target goes to the format's `deserialize_any` (so that the format's own
//! leniencies, such as `rmp_serde` giving a struct from an array, never apply), through a
//! [`Guard`] visitor that refuses whatever the target may not be given there: structs and maps
//! only from maps, keys only strings, enums only from a variant name or a map of one variant,
//! `deserialize_ignored_any` (a field the target does not know) refused. Nesting and the number
//! of values in a body are counted as they are read, so a refusal comes before the memory.

use std::{cell::Cell, fmt, marker::PhantomData};

use serde::de::{
    self, value::StringDeserializer, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny,
    IntoDeserializer, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use super::{MAX_DEPTH, MAX_VALUES};

/// Where a value is read: its nesting depth, and the values the body may still hold (shared by
/// every reader of one body).
#[derive(Clone, Copy)]
pub(super) struct Scope<'b> {
    depth: usize,
    values_left: &'b Cell<usize>,
}

impl<'b> Scope<'b> {
    /// The scope of a body's root; `values_left` starts at [`MAX_VALUES`].
    pub(super) fn root(values_left: &'b Cell<usize>) -> Self {
        Self {
            depth: 0,
            values_left,
        }
    }

    /// The scope inside one more array or map.
    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(Self {
            depth: self.depth + 1,
            ..self
        })
    }

    /// Counts one array element or map entry against [`MAX_VALUES`].
    fn count<E: de::Error>(self) -> Result<(), E> {
        match self.values_left.get().checked_sub(1) {
            Some(left) => {
                self.values_left.set(left);
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "more than {MAX_VALUES} array elements and map entries in one body"
            ))),
        }
    }
}

/// What a value may be where it is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Any,
    Map,
    Enum,
    Key,
    Identifier,
}

/// A format's deserializer `D` read by the strict rules (see the module's documentation).
pub(super) struct Strict<'b, D> {
    inner: D,
    scope: Scope<'b>,
}

impl<'b, D> Strict<'b, D> {
    pub(super) fn new(inner: D, scope: Scope<'b>) -> Self {
        Self { inner, scope }
    }

    fn guard<V>(&self, visitor: V, want: Want) -> Guard<'b, V> {
        Guard {
            visitor,
            want,
            scope: self.scope,
        }
    }
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let guard = self.guard(visitor, Want::Any);
        self.inner.deserialize_any(guard)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let guard = self.guard(visitor, Want::Any);
        self.inner.deserialize_option(guard)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let guard = self.guard(visitor, Want::Map);
        self.inner.deserialize_any(guard)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let guard = self.guard(visitor, Want::Enum);
        self.inner.deserialize_any(guard)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let guard = self.guard(visitor, Want::Identifier);
        self.inner.deserialize_any(guard)
    }

    /// serde ignores the value of a field its target does not know: refused.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, D::Error> {
        Err(de::Error::custom("unknown field"))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let guard = self.guard(visitor, Want::Any);
        self.inner.deserialize_newtype_struct(name, guard)
    }

    /// To the format's own: a MessagePack extension is read as the tuple `(tag, data)`.
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let guard = self.guard(visitor, Want::Any);
        self.inner.deserialize_tuple(len, guard)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let guard = self.guard(visitor, Want::Any);
        self.inner.deserialize_bytes(guard)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let guard = self.guard(visitor, Want::Any);
        self.inner.deserialize_byte_buf(guard)
    }

    fn is_human_readable(&self) -> bool {
        // As rmp_serde, which decoded kinds' inputs before: a type sees one form in either
        // encoding.
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct seq tuple_struct
    }
}

/// A map key: a string, also for targets (such as `rmpv::Value` or a map of integers) that would
/// take any value.
struct Key<'b, D>(Strict<'b, D>);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Key<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let guard = self.0.guard(visitor, Want::Key);
        self.0.inner.deserialize_any(guard)
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

/// The target's visitor, given only what it may be given where it reads (`want`).
struct Guard<'b, V> {
    visitor: V,
    want: Want,
    scope: Scope<'b>,
}

impl<V> Guard<'_, V> {
    /// Refuses a value of kind `got` (`"an array"`) unless any value is wanted.
    fn only_any<E: de::Error>(&self, got: &str) -> Result<(), E> {
        match self.want {
            Want::Any => Ok(()),
            _ => Err(self.refusal(got)),
        }
    }

    /// The error of a value of kind `got` where it does not fit.
    fn refusal<E: de::Error>(&self, got: &str) -> E {
        let expected = match self.want {
            Want::Any => "any value",
            Want::Map => "a map",
            Want::Enum => "a variant name or a map of one variant",
            Want::Key => "a string as map key",
            Want::Identifier => "a field name (a string)",
        };
        E::custom(format_args!("expected {expected}, got {got}"))
    }

    /// Refuses a string where a map is wanted.
    fn string_fits<E: de::Error>(&self) -> Result<(), E> {
        match self.want {
            Want::Map => self.only_any("a string"),
            _ => Ok(()),
        }
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Guard<'_, V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(formatter)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.only_any("a boolean")?;
        self.visitor.visit_bool(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.only_any("an integer")?;
        self.visitor.visit_i64(v)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<V::Value, E> {
        self.only_any("an integer")?;
        self.visitor.visit_i128(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.only_any("an integer")?;
        self.visitor.visit_u64(v)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<V::Value, E> {
        self.only_any("an integer")?;
        self.visitor.visit_u128(v)
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<V::Value, E> {
        self.only_any("a float")?;
        self.visitor.visit_f32(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.only_any("a float")?;
        self.visitor.visit_f64(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.string_fits()?;
        match self.want {
            Want::Enum => self.visitor.visit_enum(UnitVariant::<E>::new(v.to_owned())),
            _ => self.visitor.visit_str(v),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.string_fits()?;
        match self.want {
            Want::Enum => self.visitor.visit_enum(UnitVariant::<E>::new(v.to_owned())),
            _ => self.visitor.visit_borrowed_str(v),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        self.string_fits()?;
        match self.want {
            Want::Enum => self.visitor.visit_enum(UnitVariant::<E>::new(v)),
            _ => self.visitor.visit_string(v),
        }
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.only_any("binary data")?;
        self.visitor.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.only_any("binary data")?;
        self.visitor.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        self.only_any("binary data")?;
        self.visitor.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.only_any("nil")?;
        self.visitor.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.visitor
            .visit_some(Strict::new(deserializer, self.scope))
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.only_any("nil")?;
        self.visitor.visit_unit()
    }

    /// A MessagePack extension, as `rmp_serde` presents it.
    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.only_any("a MessagePack extension")?;
        self.visitor
            .visit_newtype_struct(Strict::new(deserializer, self.scope))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.only_any("an array")?;
        let scope = self.scope.deeper()?;
        self.visitor.visit_seq(Items { seq, scope })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let scope = self.scope.deeper()?;
        let mut entries = Entries { map, scope };
        match self.want {
            Want::Any | Want::Map => self.visitor.visit_map(entries),
            Want::Enum => {
                let value = self.visitor.visit_enum(MapVariant {
                    entries: &mut entries,
                })?;
                match entries.map.next_key::<IgnoredAny>()? {
                    None => Ok(value),
                    Some(_) => Err(de::Error::custom(
                        "expected a variant name or a map of one variant, got a map of several",
                    )),
                }
            }
            Want::Key | Want::Identifier => Err(self.refusal("a map")),
        }
    }

    fn visit_enum<A: EnumAccess<'de>>(self, _data: A) -> Result<V::Value, A::Error> {
        Err(de::Error::custom("expected a plain value, got an enum"))
    }
}

/// A seed whose value is read by the strict rules, in `scope`.
struct Scoped<'b, S> {
    seed: S,
    scope: Scope<'b>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Scoped<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Strict::new(deserializer, self.scope))
    }
}

/// A seed whose value is read as a map key.
struct KeySeed<'b, S> {
    seed: S,
    scope: Scope<'b>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.seed
            .deserialize(Key(Strict::new(deserializer, self.scope)))
    }
}

/// The elements of an array, each read by the strict rules and counted.
struct Items<'b, A> {
    seq: A,
    scope: Scope<'b>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Items<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let scope = self.scope;
        let item = self.seq.next_element_seed(Scoped { seed, scope })?;
        if item.is_some() {
            scope.count()?;
        }
        Ok(item)
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

/// The entries of a map: keys only strings, values read by the strict rules, entries counted.
struct Entries<'b, A> {
    map: A,
    scope: Scope<'b>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Entries<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let scope = self.scope;
        let key = self.map.next_key_seed(KeySeed { seed, scope })?;
        if key.is_some() {
            scope.count()?;
        }
        Ok(key)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let scope = self.scope;
        self.map.next_value_seed(Scoped { seed, scope })
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// An enum variant given by its name alone: a unit variant.
struct UnitVariant<E> {
    name: String,
    error: PhantomData<E>,
}

impl<E> UnitVariant<E> {
    fn new(name: String) -> Self {
        Self {
            name,
            error: PhantomData,
        }
    }
}

impl<'de, E: de::Error> EnumAccess<'de> for UnitVariant<E> {
    type Error = E;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(mut self, seed: S) -> Result<(S::Value, Self), E> {
        let name: StringDeserializer<E> = std::mem::take(&mut self.name).into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de, E: de::Error> VariantAccess<'de> for UnitVariant<E> {
    type Error = E;

    fn unit_variant(self) -> Result<(), E> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, E> {
        Err(E::custom("this variant needs a value"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, E> {
        Err(E::custom("this variant needs an array"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, E> {
        Err(E::custom("this variant needs a map"))
    }
}

/// An enum variant given as a map of one entry: the variant's name, and its value.
struct MapVariant<'a, 'b, A> {
    entries: &'a mut Entries<'b, A>,
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for MapVariant<'_, '_, A> {
    type Error = A::Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), A::Error> {
        match self.entries.next_key_seed(seed)? {
            Some(variant) => Ok((variant, self)),
            None => Err(de::Error::custom(
                "expected a variant name or a map of one variant, got an empty map",
            )),
        }
    }
}

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for MapVariant<'_, '_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.entries.next_value_seed(PhantomData::<()>)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.entries.next_value_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.entries.next_value_seed(Shaped {
            visitor,
            shape: Shape::Tuple(len),
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.entries.next_value_seed(Shaped {
            visitor,
            shape: Shape::Struct(fields),
        })
    }
}

/// What a variant's value is read as.
enum Shape {
    Tuple(usize),
    Struct(&'static [&'static str]),
}

/// A seed reading a variant's value as its shape says.
struct Shaped<V> {
    visitor: V,
    shape: Shape,
}

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Shaped<V> {
    type Value = V::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        match self.shape {
            Shape::Tuple(len) => deserializer.deserialize_tuple(len, self.visitor),
            Shape::Struct(fields) => deserializer.deserialize_struct("", fields, self.visitor),
        }
    }
}
