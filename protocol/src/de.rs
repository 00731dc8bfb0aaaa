//! The hand-written `Deserialize` of [`PodEvent`]: one pass, no buffering
//! of the whole event.
//!
//! A derived internally tagged enum buffers every field of the object into
//! serde's `Content` before it can look at `kind`, then deserializes the
//! variant from the buffer: two passes and an allocation per value. This
//! visitor reads the object once, fields in any order, into typed slots;
//! senders write `kind` first, so almost always every field is typed as it
//! is read. It decodes exactly what the derive decoded (proptested against
//! a derived reference in `tests/tests/decoder.rs`):
//!
//! - `kind` may be anywhere; a field read before it is buffered (in
//!   [`Buffered`], which deserializes the way serde's `Content` does) and
//!   typed once the kind is known;
//! - unknown fields, and known fields the event's kind does not have, are
//!   ignored whatever their value (old receivers ignore new fields);
//! - a duplicate `kind`, or a duplicate field the event has, is an error
//!   (`duplicate field`), as in the derive; a duplicate of an ignored field
//!   is ignored, as in the derive;
//! - a missing required field is `missing field` for the first absent one
//!   in declaration order, after every present field was checked, so
//!   `DecodeError`'s classification is unchanged;
//! - the sequence form the derive also accepted (`["turn_ended","w"]`:
//!   the kind, then the fields in declaration order) still decodes;
//! - the later dialect's names (`worker_name`, `parent_worker`,
//!   `sub_worker`) are aliases of `pod_name`, `parent_pod`, `sub_pod`: a
//!   line may use either, and naming one field twice under both names is a
//!   duplicate, as serde's `alias` does.
//!
//! - an ignored value is parsed in full and dropped ([`Skip`]), not
//!   skipped over, because the derive's buffering parsed it: a number out
//!   of range or nesting past serde_json's recursion limit is still an
//!   error there.
//!
//! `scope` alone is always buffered before it is typed: its rules hold an
//! enum, and buffered content accepts `{"write":{}}` for a unit variant
//! where serde_json itself does not. A scope is a few short rules, so this
//! costs little, and lines the derive accepted stay accepted.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::buffer::Buffered;
use crate::codec::EVENT_KINDS;
use crate::{PodEvent, ScopeRule};

/// The `kind` of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TurnEnded,
    Errored,
    ShutDown,
    ScopeSubDelegated,
}

impl Kind {
    /// Whether an event of this kind has `field`.
    fn has(self, field: Field) -> bool {
        use Field as F;
        match self {
            Kind::TurnEnded | Kind::ShutDown => matches!(field, F::PodName | F::Incarnation),
            Kind::Errored => matches!(field, F::PodName | F::Message | F::Incarnation),
            Kind::ScopeSubDelegated => matches!(
                field,
                F::ParentPod
                    | F::SubPod
                    | F::SubSocket
                    | F::Scope
                    | F::SubIncarnation
                    | F::SpawnerSocket
            ),
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "turn_ended" => Kind::TurnEnded,
            "errored" => Kind::Errored,
            "shut_down" => Kind::ShutDown,
            "scope_sub_delegated" => Kind::ScopeSubDelegated,
            _ => return None,
        })
    }
}

/// A key of an event object. Aliases of the later dialect map to the same
/// field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Kind,
    PodName,
    Message,
    Incarnation,
    ParentPod,
    SubPod,
    SubSocket,
    Scope,
    SubIncarnation,
    SpawnerSocket,
    Unknown,
}

impl Field {
    fn from_name(name: &str) -> Field {
        match name {
            "kind" => Field::Kind,
            "pod_name" | "worker_name" => Field::PodName,
            "message" => Field::Message,
            "incarnation" => Field::Incarnation,
            "parent_pod" | "parent_worker" => Field::ParentPod,
            "sub_pod" | "sub_worker" => Field::SubPod,
            "sub_socket" => Field::SubSocket,
            "scope" => Field::Scope,
            "sub_incarnation" => Field::SubIncarnation,
            "spawner_socket" => Field::SpawnerSocket,
            _ => Field::Unknown,
        }
    }

    /// The name errors use: the original dialect's, as serde's `alias`
    /// does.
    fn name(self) -> &'static str {
        match self {
            Field::Kind => "kind",
            Field::PodName => "pod_name",
            Field::Message => "message",
            Field::Incarnation => "incarnation",
            Field::ParentPod => "parent_pod",
            Field::SubPod => "sub_pod",
            Field::SubSocket => "sub_socket",
            Field::Scope => "scope",
            Field::SubIncarnation => "sub_incarnation",
            Field::SpawnerSocket => "spawner_socket",
            Field::Unknown => "unknown",
        }
    }
}

/// Reads a key without allocating when the input lets it borrow.
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = Field;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, name: &str) -> Result<Field, E> {
        Ok(Field::from_name(name))
    }
    fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Field, E> {
        Ok(std::str::from_utf8(name).map_or(Field::Unknown, Field::from_name))
    }
    fn visit_u64<E: de::Error>(self, _index: u64) -> Result<Field, E> {
        Ok(Field::Unknown)
    }
}

/// Reads the value of `kind`: a name, or (from buffered content only, as
/// in the derive) a variant index.
struct KindSeed;

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = Kind;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Kind, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KindSeed {
    type Value = Kind;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("variant identifier")
    }
    fn visit_str<E: de::Error>(self, name: &str) -> Result<Kind, E> {
        Kind::from_name(name).ok_or_else(|| de::Error::unknown_variant(name, EVENT_KINDS))
    }
    fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Kind, E> {
        match std::str::from_utf8(name).ok().and_then(Kind::from_name) {
            Some(kind) => Ok(kind),
            None => Err(de::Error::unknown_variant(
                &String::from_utf8_lossy(name),
                EVENT_KINDS,
            )),
        }
    }
    fn visit_u64<E: de::Error>(self, index: u64) -> Result<Kind, E> {
        match index {
            0 => Ok(Kind::TurnEnded),
            1 => Ok(Kind::Errored),
            2 => Ok(Kind::ShutDown),
            3 => Ok(Kind::ScopeSubDelegated),
            _ => Err(de::Error::invalid_value(
                de::Unexpected::Unsigned(index),
                &"variant index 0 <= i < 4",
            )),
        }
    }
}

/// Parses a value in full and drops it, allocating nothing.
///
/// serde's `IgnoredAny` would let serde_json skip the text without
/// parsing it, which accepts what the derive refused (`1e400`, nesting
/// deeper than 128); this keeps every ignored value to the rules the
/// derive's buffering applied.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Skip, D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = Skip;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Skip, D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(Skip)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(Skip)
    }
}

/// Where a field's value comes from: the input, or a buffered value.
trait Source<'de> {
    type Error: de::Error;
    fn take<T: Deserialize<'de>>(self) -> Result<T, Self::Error>;
}

impl<'de, A: MapAccess<'de>> Source<'de> for &mut A {
    type Error = A::Error;
    fn take<T: Deserialize<'de>>(self) -> Result<T, A::Error> {
        self.next_value()
    }
}

/// A buffered value, with the error type of the deserializer it came from.
struct FromBuffer<'de, E>(Buffered<'de>, std::marker::PhantomData<E>);

impl<'de, E> FromBuffer<'de, E> {
    fn new(value: Buffered<'de>) -> Self {
        FromBuffer(value, std::marker::PhantomData)
    }
}

impl<'de, E: de::Error> Source<'de> for FromBuffer<'de, E> {
    type Error = E;
    fn take<T: Deserialize<'de>>(self) -> Result<T, E> {
        self.0.into_value()
    }
}

/// The fields read so far. `Option<Option<String>>` for the optional
/// fields tells "absent" from "null" only to detect duplicates.
#[derive(Default)]
struct Slots {
    pod_name: Option<String>,
    message: Option<String>,
    incarnation: Option<Option<String>>,
    parent_pod: Option<String>,
    sub_pod: Option<String>,
    sub_socket: Option<String>,
    scope: Option<Vec<ScopeRule>>,
    sub_incarnation: Option<Option<String>>,
    spawner_socket: Option<Option<String>>,
}

fn put<'de, T: Deserialize<'de>, S: Source<'de>>(
    slot: &mut Option<T>,
    field: Field,
    source: S,
) -> Result<(), S::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(field.name()));
    }
    *slot = Some(source.take()?);
    Ok(())
}

fn required<T, E: de::Error>(slot: Option<T>, field: Field) -> Result<T, E> {
    slot.ok_or_else(|| de::Error::missing_field(field.name()))
}

impl Slots {
    /// Reads `field`'s value from `source` into its slot.
    fn fill<'de, S: Source<'de>>(&mut self, field: Field, source: S) -> Result<(), S::Error> {
        match field {
            Field::PodName => put(&mut self.pod_name, field, source),
            Field::Message => put(&mut self.message, field, source),
            Field::Incarnation => put(&mut self.incarnation, field, source),
            Field::ParentPod => put(&mut self.parent_pod, field, source),
            Field::SubPod => put(&mut self.sub_pod, field, source),
            Field::SubSocket => put(&mut self.sub_socket, field, source),
            // `EventVisitor` always passes `scope` buffered (module doc).
            Field::Scope => put(&mut self.scope, field, source),
            Field::SubIncarnation => put(&mut self.sub_incarnation, field, source),
            Field::SpawnerSocket => put(&mut self.spawner_socket, field, source),
            // The caller handles `kind` and skips unknown fields.
            Field::Kind | Field::Unknown => source.take::<Skip>().map(drop),
        }
    }

    /// The event, or the first missing field in declaration order.
    fn finish<E: de::Error>(self, kind: Kind) -> Result<PodEvent, E> {
        Ok(match kind {
            Kind::TurnEnded => PodEvent::TurnEnded {
                pod_name: required(self.pod_name, Field::PodName)?,
                incarnation: self.incarnation.flatten(),
            },
            Kind::Errored => PodEvent::Errored {
                pod_name: required(self.pod_name, Field::PodName)?,
                message: required(self.message, Field::Message)?,
                incarnation: self.incarnation.flatten(),
            },
            Kind::ShutDown => PodEvent::ShutDown {
                pod_name: required(self.pod_name, Field::PodName)?,
                incarnation: self.incarnation.flatten(),
            },
            Kind::ScopeSubDelegated => PodEvent::ScopeSubDelegated {
                parent_pod: required(self.parent_pod, Field::ParentPod)?,
                sub_pod: required(self.sub_pod, Field::SubPod)?,
                sub_socket: required(self.sub_socket, Field::SubSocket)?,
                scope: required(self.scope, Field::Scope)?,
                sub_incarnation: self.sub_incarnation.flatten(),
                spawner_socket: self.spawner_socket.flatten(),
            },
        })
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = PodEvent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("internally tagged enum PodEvent")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PodEvent, A::Error> {
        let mut kind = None;
        let mut slots = Slots::default();
        // Fields read before `kind`, in input order (usually none).
        let mut early: Vec<(Field, Buffered<'de>)> = Vec::new();
        // The first error in a buffered value. The derive checked `kind`
        // over the whole object before it typed any field, so a later
        // duplicate `kind` must still win over this error, which may be a
        // `missing field` (of a scope rule) that `decode` would classify
        // differently. Once set, the remaining values are only skipped.
        let mut failed: Option<A::Error> = None;
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            match (field, kind) {
                (Field::Kind, Some(_)) => return Err(de::Error::duplicate_field("kind")),
                (Field::Kind, None) => {
                    let known = map.next_value_seed(KindSeed)?;
                    kind = Some(known);
                    for (field, value) in early.drain(..) {
                        if known.has(field) && failed.is_none() {
                            failed = slots.fill(field, FromBuffer::new(value)).err();
                        }
                    }
                }
                (field, Some(known)) if known.has(field) && failed.is_none() => {
                    if field == Field::Scope {
                        let value = map.next_value()?;
                        failed = slots.fill(field, FromBuffer::new(value)).err();
                    } else {
                        // A string: typed straight from the input, where
                        // serde_json and buffered content agree. An error
                        // here is never `missing field`, so it may win.
                        slots.fill(field, &mut map)?;
                    }
                }
                (Field::Unknown, _) | (_, Some(_)) => {
                    map.next_value_seed(Skip)?;
                }
                (field, None) => early.push((field, map.next_value()?)),
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        match failed {
            Some(error) => Err(error),
            None => slots.finish(kind),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PodEvent, A::Error> {
        let kind = seq
            .next_element_seed(KindSeed)?
            .ok_or_else(|| de::Error::missing_field("kind"))?;
        let mut fields = FieldsInOrder {
            seq: &mut seq,
            read: 0,
        };
        let event = match kind {
            Kind::TurnEnded => PodEvent::TurnEnded {
                pod_name: fields.required("struct variant PodEvent::TurnEnded with 2 elements")?,
                incarnation: fields.optional()?,
            },
            Kind::Errored => PodEvent::Errored {
                pod_name: fields.required("struct variant PodEvent::Errored with 3 elements")?,
                message: fields.required("struct variant PodEvent::Errored with 3 elements")?,
                incarnation: fields.optional()?,
            },
            Kind::ShutDown => PodEvent::ShutDown {
                pod_name: fields.required("struct variant PodEvent::ShutDown with 2 elements")?,
                incarnation: fields.optional()?,
            },
            Kind::ScopeSubDelegated => {
                const EXPECTED: &str = "struct variant PodEvent::ScopeSubDelegated with 6 elements";
                PodEvent::ScopeSubDelegated {
                    parent_pod: fields.required(EXPECTED)?,
                    sub_pod: fields.required(EXPECTED)?,
                    sub_socket: fields.required(EXPECTED)?,
                    scope: match fields.next::<Buffered<'de>>()? {
                        Some(scope) => scope.into_value()?,
                        None => return Err(de::Error::invalid_length(fields.read, &EXPECTED)),
                    },
                    sub_incarnation: fields.optional()?,
                    spawner_socket: fields.optional()?,
                }
            }
        };
        // The derive's buffered sequence refused elements left over.
        let read = fields.read;
        let mut extra = 0;
        while seq.next_element_seed(Skip)?.is_some() {
            extra += 1;
        }
        if extra > 0 {
            return Err(de::Error::invalid_length(
                read + extra,
                &format!("{read} elements in sequence").as_str(),
            ));
        }
        Ok(event)
    }
}

/// The elements after `kind` in the sequence form.
struct FieldsInOrder<'a, A> {
    seq: &'a mut A,
    /// Elements read, `kind` excluded.
    read: usize,
}

impl<'de, A: SeqAccess<'de>> FieldsInOrder<'_, A> {
    fn next<T: Deserialize<'de>>(&mut self) -> Result<Option<T>, A::Error> {
        let item = self.seq.next_element()?;
        self.read += usize::from(item.is_some());
        Ok(item)
    }

    fn required<T: Deserialize<'de>>(&mut self, expected: &str) -> Result<T, A::Error> {
        let at = self.read;
        self.next()?
            .ok_or_else(|| de::Error::invalid_length(at, &expected))
    }

    fn optional(&mut self) -> Result<Option<String>, A::Error> {
        Ok(self.next::<Option<String>>()?.flatten())
    }
}

impl<'de> Deserialize<'de> for PodEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EventVisitor)
    }
}
