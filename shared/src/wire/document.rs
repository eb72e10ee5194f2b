//! Reading a request document's top level straight into its members, without building a map.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The top-level members of a request document. A body is read straight into these rather than
/// into a map first: building, searching and dropping that map is a large part of what reading a
/// valid request costs (BENCHMARKS.md, "CPU"). Read either way, a key given
/// twice keeps its last value, as a map does.
#[derive(Default)]
pub(super) struct Members {
    pub version: Option<Value>,
    pub id: Option<Value>,
    pub bot: Option<Value>,
    pub method: Option<Value>,
    pub params: Option<Value>,
    pub metadata: Option<Value>,
    pub send_at: Option<Value>,
    pub priority: Option<Value>,
    pub force: Option<Value>,
    pub campaign: Option<Value>,
    /// The first key, in sorted order, that the format does not know (the one a map would list
    /// first, so both ways name the same one).
    pub unknown: Option<String>,
}

impl Members {
    pub fn from_map(map: Map<String, Value>) -> Self {
        let mut members = Self::default();
        for (key, value) in map {
            members.set(Cow::Owned(key), value);
        }
        members
    }

    pub fn set(&mut self, key: Cow<'_, str>, value: Value) {
        let slot = match key.as_ref() {
            "version" => &mut self.version,
            "id" => &mut self.id,
            "bot" => &mut self.bot,
            "method" => &mut self.method,
            "params" => &mut self.params,
            "metadata" => &mut self.metadata,
            "send_at" => &mut self.send_at,
            "priority" => &mut self.priority,
            "force" => &mut self.force,
            "campaign" => &mut self.campaign,
            _ => {
                if self.unknown.as_deref().is_none_or(|first| key.as_ref() < first) {
                    self.unknown = Some(key.into_owned());
                }
                return;
            }
        };
        *slot = Some(value);
    }
}

/// A JSON document as `SendRequest::from_json_or_id` reads it: an object's members, or `None`
/// for anything else. Every value is still read in full (as `Value`s), so whatever makes a
/// document invalid JSON (a number out of range, say) does so here too. One difference from a
/// `Value`, on purpose: serde_json's `raw_value` feature (which the dispatcher's batch splitting
/// turns on) makes a `Value` unwrap an object whose first key is its private raw-value token; at
/// the top level here that key is just an unknown member, so a body cannot hide the document
/// inside a string.
pub(super) struct Document(pub Option<Members>);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
        let mut members = Members::default();
        while let Some(MemberKey(key)) = map.next_key()? {
            members.set(key, map.next_value()?);
        }
        Ok(Document(Some(members)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Document, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Document(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Document, E> {
        Ok(Document(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Document, E> {
        Ok(Document(None))
    }
}

/// A member's name, borrowed from the body unless it holds escapes.
struct MemberKey<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for MemberKey<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = MemberKey<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<MemberKey<'de>, E> {
                Ok(MemberKey(Cow::Borrowed(key)))
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<MemberKey<'de>, E> {
                Ok(MemberKey(Cow::Owned(key.to_string())))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}
