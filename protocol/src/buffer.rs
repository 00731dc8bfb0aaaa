//! A buffered JSON value that deserializes exactly as serde's derive sees
//! buffered content.
//!
//! serde's derive for an internally tagged enum buffers every field into
//! its private `Content` type and deserializes the variant from that, and
//! `Content` is a little more lenient than serde_json itself (a unit
//! variant's value may be `null` *or* `{}`, say). The hand-written
//! `PodEvent` decoder (`crate::de`) reads most fields straight from the
//! input, where the two agree, but buffers into [`Buffered`] the values it
//! cannot type yet (a field that comes before `kind`) and `scope` (whose
//! rules contain an enum), so that every line decodes to exactly what the
//! derive decoded. This module mirrors `ContentDeserializer`'s behaviour
//! for every method a derived type calls.

use std::marker::PhantomData;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};

/// One value as the input held it, strings borrowed where possible.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Buffered<'de> {
    Unit,
    None,
    Some(Box<Buffered<'de>>),
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Char(char),
    Str(&'de str),
    String(String),
    Bytes(&'de [u8]),
    ByteBuf(Vec<u8>),
    Newtype(Box<Buffered<'de>>),
    Seq(Vec<Buffered<'de>>),
    Map(Vec<(Buffered<'de>, Buffered<'de>)>),
}

impl<'de> Buffered<'de> {
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Buffered::Unit => Unexpected::Unit,
            Buffered::None | Buffered::Some(_) => Unexpected::Option,
            Buffered::Bool(b) => Unexpected::Bool(*b),
            Buffered::U64(n) => Unexpected::Unsigned(*n),
            Buffered::I64(n) => Unexpected::Signed(*n),
            Buffered::F64(f) => Unexpected::Float(*f),
            Buffered::Char(c) => Unexpected::Char(*c),
            Buffered::Str(s) => Unexpected::Str(s),
            Buffered::String(s) => Unexpected::Str(s),
            Buffered::Bytes(b) => Unexpected::Bytes(b),
            Buffered::ByteBuf(b) => Unexpected::Bytes(b),
            Buffered::Newtype(_) => Unexpected::NewtypeStruct,
            Buffered::Seq(_) => Unexpected::Seq,
            Buffered::Map(_) => Unexpected::Map,
        }
    }

    /// Deserializes a `T` from this value, with the error type of the
    /// deserializer it came from.
    pub(crate) fn into_value<T: Deserialize<'de>, E: de::Error>(self) -> Result<T, E> {
        T::deserialize(BufferedDeserializer::new(self))
    }
}

impl<'de> Deserialize<'de> for Buffered<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BufferedVisitor)
    }
}

struct BufferedVisitor;

impl<'de> Visitor<'de> for BufferedVisitor {
    type Value = Buffered<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Buffered::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Buffered::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Buffered::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Buffered::F64(v))
    }
    fn visit_char<E>(self, v: char) -> Result<Self::Value, E> {
        Ok(Buffered::Char(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Buffered::String(v.to_owned()))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Buffered::Str(v))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Buffered::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(Buffered::ByteBuf(v.to_owned()))
    }
    fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        Ok(Buffered::Bytes(v))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        Ok(Buffered::ByteBuf(v))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Buffered::Unit)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Buffered::None)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Buffered::deserialize(d).map(|v| Buffered::Some(Box::new(v)))
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Buffered::deserialize(d).map(|v| Buffered::Newtype(Box::new(v)))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // A hostile size hint must not reserve memory up front.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Buffered::Seq(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Buffered::Map(entries))
    }
}

/// Deserializes from a [`Buffered`] value the way serde's
/// `ContentDeserializer` does.
pub(crate) struct BufferedDeserializer<'de, E> {
    value: Buffered<'de>,
    error: PhantomData<E>,
}

impl<'de, E> BufferedDeserializer<'de, E> {
    pub(crate) fn new(value: Buffered<'de>) -> Self {
        BufferedDeserializer {
            value,
            error: PhantomData,
        }
    }
}

impl<'de, E: de::Error> IntoDeserializer<'de, E> for Buffered<'de> {
    type Deserializer = BufferedDeserializer<'de, E>;
    fn into_deserializer(self) -> Self::Deserializer {
        BufferedDeserializer::new(self)
    }
}

fn visit_seq<'de, V: Visitor<'de>, E: de::Error>(
    items: Vec<Buffered<'de>>,
    visitor: V,
) -> Result<V::Value, E> {
    let mut seq = SeqDeserializer::new(items.into_iter());
    let value = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(value)
}

fn visit_map<'de, V: Visitor<'de>, E: de::Error>(
    entries: Vec<(Buffered<'de>, Buffered<'de>)>,
    visitor: V,
) -> Result<V::Value, E> {
    let mut map = MapDeserializer::new(entries.into_iter());
    let value = visitor.visit_map(&mut map)?;
    map.end()?;
    Ok(value)
}

impl<'de, E: de::Error> de::Deserializer<'de> for BufferedDeserializer<'de, E> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.value {
            Buffered::Unit => visitor.visit_unit(),
            Buffered::None => visitor.visit_none(),
            Buffered::Some(v) => visitor.visit_some(BufferedDeserializer::new(*v)),
            Buffered::Bool(v) => visitor.visit_bool(v),
            Buffered::U64(v) => visitor.visit_u64(v),
            Buffered::I64(v) => visitor.visit_i64(v),
            Buffered::F64(v) => visitor.visit_f64(v),
            Buffered::Char(v) => visitor.visit_char(v),
            Buffered::Str(v) => visitor.visit_borrowed_str(v),
            Buffered::String(v) => visitor.visit_string(v),
            Buffered::Bytes(v) => visitor.visit_borrowed_bytes(v),
            Buffered::ByteBuf(v) => visitor.visit_byte_buf(v),
            Buffered::Newtype(v) => visitor.visit_newtype_struct(BufferedDeserializer::new(*v)),
            Buffered::Seq(v) => visit_seq(v, visitor),
            Buffered::Map(v) => visit_map(v, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.value {
            Buffered::None => visitor.visit_none(),
            Buffered::Some(v) => visitor.visit_some(BufferedDeserializer::new(*v)),
            Buffered::Unit => visitor.visit_unit(),
            _ => visitor.visit_some(self),
        }
    }

    // `{}` is a unit too: `ContentDeserializer` allows it so that
    // `{"tag":"Variant"}`-style unit payloads deserialize.
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.value {
            Buffered::Unit => visitor.visit_unit(),
            Buffered::Map(ref v) if v.is_empty() => visitor.visit_unit(),
            ref other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, E> {
        match self.value {
            Buffered::Map(ref v) if v.is_empty() => visitor.visit_unit(),
            Buffered::Seq(ref v) if v.is_empty() => visitor.visit_unit(),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, E> {
        match self.value {
            Buffered::Newtype(v) => visitor.visit_newtype_struct(BufferedDeserializer::new(*v)),
            _ => visitor.visit_newtype_struct(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, E> {
        let (variant, value) = match self.value {
            Buffered::Map(entries) => {
                let mut entries = entries.into_iter();
                match (entries.next(), entries.next()) {
                    (Some((variant, value)), None) => (variant, Some(value)),
                    _ => {
                        return Err(de::Error::invalid_value(
                            Unexpected::Map,
                            &"map with a single key",
                        ))
                    }
                }
            }
            s @ (Buffered::Str(_) | Buffered::String(_)) => (s, None),
            other => {
                return Err(de::Error::invalid_type(
                    other.unexpected(),
                    &"string or map",
                ))
            }
        };
        visitor.visit_enum(EnumAccess {
            variant,
            value,
            error: PhantomData,
        })
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf seq tuple tuple_struct map struct identifier
    }
}

struct EnumAccess<'de, E> {
    variant: Buffered<'de>,
    value: Option<Buffered<'de>>,
    error: PhantomData<E>,
}

impl<'de, E: de::Error> de::EnumAccess<'de> for EnumAccess<'de, E> {
    type Error = E;
    type Variant = VariantAccess<'de, E>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), E> {
        let variant = seed.deserialize(BufferedDeserializer::new(self.variant))?;
        Ok((
            variant,
            VariantAccess {
                value: self.value,
                error: PhantomData,
            },
        ))
    }
}

struct VariantAccess<'de, E> {
    value: Option<Buffered<'de>>,
    error: PhantomData<E>,
}

impl<'de, E: de::Error> de::VariantAccess<'de> for VariantAccess<'de, E> {
    type Error = E;

    fn unit_variant(self) -> Result<(), E> {
        match self.value {
            Some(value) => value.into_value(),
            None => Ok(()),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, E> {
        match self.value {
            Some(value) => seed.deserialize(BufferedDeserializer::new(value)),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, E> {
        match self.value {
            Some(Buffered::Seq(v)) => visit_seq(v, visitor),
            Some(other) => Err(de::Error::invalid_type(
                other.unexpected(),
                &"tuple variant",
            )),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"tuple variant",
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, E> {
        match self.value {
            Some(Buffered::Map(v)) => visit_map(v, visitor),
            Some(Buffered::Seq(v)) => visit_seq(v, visitor),
            Some(other) => Err(de::Error::invalid_type(
                other.unexpected(),
                &"struct variant",
            )),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"struct variant",
            )),
        }
    }
}
