//! What a request carries from one delivery to the next — failed attempts, when it was first seen,
//! 429s, migrations, the chat the producer named, and when it may come back — as AMQP headers, and
//! how far the worker trusts them.
//!
//! Only our own workers write these headers, when they park a request in a delay queue, and they
//! seal them: an HMAC-SHA256 over the request id and every value, keyed by the bot's token, which
//! producers do not hold. On arrival the headers count only when the seal matches; anything else
//! (a first arrival, or headers a producer set itself) starts the request afresh, so no producer
//! can make a request look old, exhausted or migrated, nor hold a chat's budget. Sealed values are
//! clamped all the same.

use hmac::{Hmac, Mac};
use lapin::types::{AMQPValue, FieldTable};
use sha2::Sha256;
use shared::topology::{
    HEADER_ATTEMPTS, HEADER_FIRST_SEEN, HEADER_FLOODS, HEADER_MIGRATIONS, HEADER_NOT_BEFORE,
    HEADER_ORIGINAL_CHAT, HEADER_SEAL, HEADER_SLOT,
};

/// Latest a parked request may be due: a 429's `retry_after` can be hours, never more than a day.
pub(crate) const MAX_AHEAD_MS: u64 = 86_400_000;

/// Every bookkeeping header, the seal included.
const BOOKKEEPING: [&str; 8] = [
    HEADER_ATTEMPTS,
    HEADER_FIRST_SEEN,
    HEADER_FLOODS,
    HEADER_MIGRATIONS,
    HEADER_ORIGINAL_CHAT,
    HEADER_SLOT,
    HEADER_NOT_BEFORE,
    HEADER_SEAL,
];

/// The request's history so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carried {
    /// Transient failures so far.
    pub attempts: u32,
    /// When a worker first received the request (Unix ms).
    pub first_seen_ms: u64,
    /// 429s so far.
    pub floods: u32,
    /// Times Telegram moved the request to a supergroup.
    pub migrations: u32,
    /// The chat the producer named, once Telegram migrated it (the body then names the new one).
    pub original_chat: Option<String>,
}

impl Carried {
    /// A request seen for the first time at `now_ms`.
    pub(crate) fn fresh(now_ms: u64) -> Self {
        Self { attempts: 0, first_seen_ms: now_ms, floods: 0, migrations: 0, original_chat: None }
    }
}

/// When a parked request may be sent once it is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timing {
    /// Reserve a chat slot on arrival, as for a new request.
    Now,
    /// It keeps the chat slot it had (Unix ms), and so its place in its chat.
    Slot(u64),
    /// It takes a new chat slot, not before this (Unix ms).
    NotBefore(u64),
}

/// The headers' content: history and timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bookkeeping {
    pub carried: Carried,
    pub timing: Timing,
}

/// How the headers of an arriving request were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    /// No bookkeeping headers: a first arrival.
    None,
    /// Sealed by one of our workers.
    Sealed,
    /// Bookkeeping headers without a valid seal: ignored.
    Ignored,
}

/// The key that seals one bot's bookkeeping headers.
#[derive(Clone)]
pub(crate) struct SealKey(Hmac<Sha256>);

impl SealKey {
    pub(crate) fn new(token: &str) -> Self {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mac = Hmac::<Sha256>::new_from_slice(token.as_bytes())
            .unwrap_or_else(|_| Hmac::<Sha256>::new_from_slice(b"tg-dispatch").expect("a 11-byte key"));
        Self(mac)
    }

    fn seal(&self, id: &str, bookkeeping: &Bookkeeping) -> String {
        let mut mac = self.0.clone();
        mac.update(canonical(id, bookkeeping).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn verifies(&self, id: &str, bookkeeping: &Bookkeeping, seal: &str) -> bool {
        let Ok(seal) = hex::decode(seal) else { return false };
        let mut mac = self.0.clone();
        mac.update(canonical(id, bookkeeping).as_bytes());
        mac.verify_slice(&seal).is_ok()
    }
}

/// The text a seal covers: every value, in a fixed order, bound to the request id.
fn canonical(id: &str, b: &Bookkeeping) -> String {
    let c = &b.carried;
    let timing = match b.timing {
        Timing::Now => "-".to_string(),
        Timing::Slot(ms) => format!("s{ms}"),
        Timing::NotBefore(ms) => format!("n{ms}"),
    };
    format!(
        "v1\n{id}\n{}\n{}\n{}\n{}\n{}\n{timing}",
        c.attempts,
        c.first_seen_ms,
        c.floods,
        c.migrations,
        c.original_chat.as_deref().unwrap_or("")
    )
}

impl Bookkeeping {
    /// A request seen for the first time at `now_ms`.
    pub(crate) fn fresh(now_ms: u64) -> Self {
        Self { carried: Carried::fresh(now_ms), timing: Timing::Now }
    }

    /// Reads the headers of request `id` arriving at `now_ms`: our sealed values, clamped, or a
    /// fresh start when they are absent, malformed or not sealed by `key`.
    pub(crate) fn read(headers: Option<&FieldTable>, id: &str, key: &SealKey, now_ms: u64) -> (Self, Trust) {
        let Some(headers) = headers.filter(|h| BOOKKEEPING.iter().any(|name| h.contains_key(name))) else {
            return (Self::fresh(now_ms), Trust::None);
        };
        match Self::parse(headers) {
            Some((read, seal)) if key.verifies(id, &read, &seal) => (read.clamped(now_ms), Trust::Sealed),
            _ => (Self::fresh(now_ms), Trust::Ignored),
        }
    }

    /// Replaces every bookkeeping header of `headers` with these values and their seal.
    pub(crate) fn write(&self, headers: &mut FieldTable, id: &str, key: &SealKey) {
        let mut kept = strip(headers);
        let c = &self.carried;
        let int = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        kept.insert(HEADER_ATTEMPTS.into(), int(u64::from(c.attempts)));
        kept.insert(HEADER_FIRST_SEEN.into(), int(c.first_seen_ms));
        kept.insert(HEADER_FLOODS.into(), int(u64::from(c.floods)));
        kept.insert(HEADER_MIGRATIONS.into(), int(u64::from(c.migrations)));
        if let Some(chat) = &c.original_chat {
            kept.insert(HEADER_ORIGINAL_CHAT.into(), AMQPValue::LongString(chat.as_str().into()));
        }
        match self.timing {
            Timing::Now => {}
            Timing::Slot(ms) => {
                kept.insert(HEADER_SLOT.into(), int(ms));
            }
            Timing::NotBefore(ms) => {
                kept.insert(HEADER_NOT_BEFORE.into(), int(ms));
            }
        }
        kept.insert(HEADER_SEAL.into(), AMQPValue::LongString(key.seal(id, self).into()));
        *headers = kept;
    }

    /// The values as written, and the seal; `None` when a value is missing or malformed.
    fn parse(headers: &FieldTable) -> Option<(Self, String)> {
        let get = |name: &str| headers.inner().get(name);
        let number = |name: &str| get(name).and_then(as_u64);
        let small = |name: &str| number(name).and_then(|n| u32::try_from(n).ok());
        let carried = Carried {
            attempts: small(HEADER_ATTEMPTS)?,
            first_seen_ms: number(HEADER_FIRST_SEEN)?,
            floods: small(HEADER_FLOODS)?,
            migrations: small(HEADER_MIGRATIONS)?,
            original_chat: match get(HEADER_ORIGINAL_CHAT) {
                None => None,
                Some(value) => Some(as_string(value)?),
            },
        };
        let timing = match (get(HEADER_SLOT), get(HEADER_NOT_BEFORE)) {
            (None, None) => Timing::Now,
            (Some(slot), None) => Timing::Slot(as_u64(slot)?),
            (None, Some(not_before)) => Timing::NotBefore(as_u64(not_before)?),
            (Some(_), Some(_)) => return None,
        };
        let seal = as_string(get(HEADER_SEAL)?)?;
        Some((Self { carried, timing }, seal))
    }

    /// Sealed values still get sane bounds: not first seen in the future, not due beyond a day.
    fn clamped(mut self, now_ms: u64) -> Self {
        self.carried.first_seen_ms = self.carried.first_seen_ms.min(now_ms);
        let latest = now_ms + MAX_AHEAD_MS;
        self.timing = match self.timing {
            Timing::Slot(ms) => Timing::Slot(ms.min(latest)),
            Timing::NotBefore(ms) => Timing::NotBefore(ms.min(latest)),
            Timing::Now => Timing::Now,
        };
        self
    }
}

/// `headers` without any bookkeeping header (what a dead letter or a replay keeps of them).
pub(crate) fn strip(headers: &FieldTable) -> FieldTable {
    let mut kept = headers.inner().clone();
    kept.retain(|name, _| !BOOKKEEPING.contains(&name.as_str()));
    FieldTable::from(kept)
}

fn as_u64(value: &AMQPValue) -> Option<u64> {
    match *value {
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(n)),
        AMQPValue::Timestamp(n) => Some(n),
        _ => None,
    }
}

fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn parked() -> Bookkeeping {
        Bookkeeping {
            carried: Carried {
                attempts: 3,
                first_seen_ms: NOW - 5_000,
                floods: 2,
                migrations: 1,
                original_chat: Some("-5".into()),
            },
            timing: Timing::Slot(NOW + 40_000),
        }
    }

    #[test]
    fn sealed_headers_round_trip_for_the_same_request_and_bot() {
        let key = SealKey::new("123:secret");
        let mut headers = FieldTable::default();
        headers.insert("trace-id".into(), AMQPValue::LongString("t".into()));
        parked().write(&mut headers, "r-1", &key);
        assert_eq!(Bookkeeping::read(Some(&headers), "r-1", &key, NOW), (parked(), Trust::Sealed));
        assert!(headers.contains_key("trace-id"), "the producer's own headers are kept");
        // Another request's id, or another bot's key: the seal does not match.
        assert_eq!(Bookkeeping::read(Some(&headers), "r-2", &key, NOW).1, Trust::Ignored);
        let other = SealKey::new("456:other");
        assert_eq!(Bookkeeping::read(Some(&headers), "r-1", &other, NOW).1, Trust::Ignored);
    }

    #[test]
    fn headers_a_producer_set_are_ignored() {
        let key = SealKey::new("123:secret");
        let forged = |edit: &dyn Fn(&mut FieldTable)| {
            let mut headers = FieldTable::default();
            parked().write(&mut headers, "r-1", &key);
            edit(&mut headers);
            Bookkeeping::read(Some(&headers), "r-1", &key, NOW)
        };
        let ten_years = AMQPValue::LongLongInt((NOW + 315_360_000_000) as i64);
        type Edit = Box<dyn Fn(&mut FieldTable)>;
        let cases: Vec<Edit> = vec![
            Box::new(move |h| {
                h.insert(HEADER_SLOT.into(), ten_years.clone());
            }),
            Box::new(|h| {
                h.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(4_294_967_295));
            }),
            Box::new(|h| {
                h.insert(HEADER_FIRST_SEEN.into(), AMQPValue::LongLongInt(0));
            }),
            Box::new(|h| {
                h.insert(HEADER_ORIGINAL_CHAT.into(), AMQPValue::LongString("999".into()));
            }),
            Box::new(|h| *h = strip(h)),
        ];
        for edit in &cases {
            let (read, trust) = forged(edit.as_ref());
            assert_eq!(read, Bookkeeping::fresh(NOW));
            assert!(trust != Trust::Sealed);
        }
        // Unsealed values alone, as a raw producer would set them.
        let mut raw = FieldTable::default();
        raw.insert(HEADER_SLOT.into(), AMQPValue::LongLongInt((NOW + 3_600_000) as i64));
        raw.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(1_000_000_000_000_000_000));
        assert_eq!(
            Bookkeeping::read(Some(&raw), "r-1", &key, NOW),
            (Bookkeeping::fresh(NOW), Trust::Ignored)
        );
        assert_eq!(Bookkeeping::read(None, "r-1", &key, NOW), (Bookkeeping::fresh(NOW), Trust::None));
    }

    #[test]
    fn sealed_values_are_clamped_all_the_same() {
        let key = SealKey::new("123:secret");
        let mut far = parked();
        far.timing = Timing::NotBefore(NOW + 10 * MAX_AHEAD_MS);
        far.carried.first_seen_ms = NOW + 60_000;
        let mut headers = FieldTable::default();
        far.write(&mut headers, "r-1", &key);
        let (read, trust) = Bookkeeping::read(Some(&headers), "r-1", &key, NOW);
        assert_eq!(trust, Trust::Sealed);
        assert_eq!(read.timing, Timing::NotBefore(NOW + MAX_AHEAD_MS));
        assert_eq!(read.carried.first_seen_ms, NOW);
    }
}
