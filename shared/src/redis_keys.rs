//! The Redis key layout, in one place: the workers write these keys and `tg-dispatcher status` reads
//! them. Every key starts with the namespace (`REDIS_KEY_PREFIX`, default `tgd`).
//!
//! A bot's budgets are keyed by the numeric id of its token (the part before `:`), never by the
//! secret part, and never by its alias (aliases are local to a worker's configuration; the token is
//! what Telegram counts by):
//!
//! | key | holds |
//! |---|---|
//! | `{ns}:{bot_id}:g` | the global budget's theoretical arrival time (µs on Redis's clock) |
//! | `{ns}:{bot_id}:p` | the paid-broadcast budget's, likewise |
//! | `{ns}:{bot_id}:pb` | until when the whole bot is paused by a 429 (µs) |
//! | `{ns}:{bot_id}:lf` | the chat and time of the bot's last 429, `chat|µs` |
//! | `{ns}:{bot_id}:c:{chat}` | the chat's slots, reserved in receipt order |
//! | `{ns}:{bot_id}:s:{chat}` | the chat's actual sends |
//! | `{ns}:{bot_id}:pc:{chat}` | until when the chat is paused by a 429 (µs) |
//! | `{ns}:{bot_id}:file:{sha256}` | the `file_id` Telegram gave the bot for a file with these bytes |
//!
//! Every budget key expires by itself shortly after the instant it holds has passed; a file's
//! `file_id` is kept for [`FILE_ID_TTL_SECS`].
//!
//! Keys of one request or one chat, whatever the token:
//!
//! | key | holds |
//! |---|---|
//! | `{ns}:req:{id}` | the request's claim ([`claims`]): `sending:<worker>` while a worker sends it, `done` once delivered (for `IDEMPOTENCY_WINDOW_HOURS`), `cancelled` once cancelled |
//! | `{ns}:sup:{bot}:{chat}` | the chat is suppressed for the bot (alias): an earlier send found it gone; kept `SUPPRESSION_DAYS` |
//! | `{ns}:camp:{id}` | a campaign's control: `paused` or `cancelled` (absent while it runs) |

/// Budget keys of one bot token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotKeys {
    /// `{ns}:{bot_id}`
    prefix: String,
}

impl BotKeys {
    pub fn new(namespace: &str, bot_id: &str) -> Self {
        Self { prefix: format!("{namespace}:{bot_id}") }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    fn chat_key(&self, kind: &str, chat: &impl std::fmt::Display) -> String {
        format!("{}:{kind}:{chat}", self.prefix)
    }

    /// The global budget, or the paid-broadcast one.
    pub fn global(&self, paid: bool) -> String {
        self.key(if paid { "p" } else { "g" })
    }

    pub fn bot_pause(&self) -> String {
        self.key("pb")
    }

    pub fn last_flood(&self) -> String {
        self.key("lf")
    }

    pub fn chat_slots(&self, chat: &impl std::fmt::Display) -> String {
        self.chat_key("c", chat)
    }

    pub fn chat_sends(&self, chat: &impl std::fmt::Display) -> String {
        self.chat_key("s", chat)
    }

    pub fn chat_pause(&self, chat: &impl std::fmt::Display) -> String {
        self.chat_key("pc", chat)
    }

    /// The bot's `file_id` for a file whose bytes have this SHA-256 (hex).
    pub fn file_id(&self, sha256: &str) -> String {
        self.chat_key("file", &sha256)
    }
}

/// How long a cached `file_id` is kept: a `file_id` stays valid for a long time, and a stale one
/// only costs one refused send before the bytes are uploaded again.
pub const FILE_ID_TTL_SECS: u64 = 30 * 86_400;

/// The claim key of request `id` ([`claims`]).
pub fn request_claim(namespace: &str, id: &str) -> String {
    format!("{namespace}:req:{id}")
}

/// The key that suppresses `chat` for the bot `alias`.
pub fn suppression(namespace: &str, alias: &str, chat: &impl std::fmt::Display) -> String {
    format!("{namespace}:sup:{alias}:{chat}")
}

/// The control key of campaign `id` ([`claims::PAUSED`], [`claims::CANCELLED`]).
pub fn campaign_control(namespace: &str, id: &str) -> String {
    format!("{namespace}:camp:{id}")
}

/// Claims: which worker may send a request now, whether it was cancelled, and whether it was
/// delivered already. One atomic check right before the call to Telegram, one write after it, so
/// that a request id is sent once whichever workers hold copies of it, and a cancelled request is
/// never sent. The dispatcher cancels through the same key.
pub mod claims {
    /// The claim value of a delivered request.
    pub const DONE: &str = "done";
    /// The claim value of a cancelled request.
    pub const CANCELLED: &str = "cancelled";
    /// The control value of a paused campaign.
    pub const PAUSED: &str = "paused";
    /// How long a cancellation is kept: longer than a request may be scheduled ahead.
    pub const CANCELLED_TTL_SECS: u64 = 91 * 86_400;

    /// Before the call. KEYS: claim, suppression of the chat, and the campaign's control key for
    /// a campaign's request. ARGV: this worker's claim value (`sending:…`), the claim's lifetime in
    /// ms, `1` to ignore the suppression. Returns `ok` (the claim is this worker's), `cancelled`
    /// (the request or its campaign), `paused` (its campaign), `done`, `busy` (another worker is
    /// sending it) or `suppressed`.
    pub const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v == 'cancelled' or v == 'done' then return v end
if KEYS[3] then
  local c = redis.call('GET', KEYS[3])
  if c == 'cancelled' or c == 'paused' then return c end
end
if v and v ~= ARGV[1] then return 'busy' end
if ARGV[3] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 'suppressed' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'ok'
";

    /// After a call that did not deliver. KEYS: claim. ARGV: this worker's claim value. Releases
    /// the claim if it is still this worker's.
    pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

    /// Setting a campaign's control key. KEYS: the control key. ARGV: `paused`, `cancelled` or
    /// empty (let it run), and the lifetime in s. A cancellation is final: nothing replaces or
    /// removes it. Returns what the key holds afterwards (empty for nothing).
    pub const CAMPAIGN: &str = r"
local v = redis.call('GET', KEYS[1])
if v == 'cancelled' then return v end
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return ARGV[1]
";

    /// Cancelling. KEYS: claim. ARGV: the cancellation's lifetime in s. Returns `cancelled` (now,
    /// or before), `done` (delivered already) or `sending` (a worker is sending it now).
    pub const CANCEL: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'cancelled', 'EX', ARGV[1])
  return 'cancelled'
end
if v == 'cancelled' or v == 'done' then return v end
return 'sending'
";
}

/// What a budget key is, read back from its name (for `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetKey {
    Global,
    Paid,
    BotPause,
    LastFlood,
    ChatSlots,
    ChatSends,
    ChatPause,
}

/// Splits a key of `namespace` into its bot id and kind; `None` for keys that are not budgets.
pub fn parse_budget_key<'k>(namespace: &str, key: &'k str) -> Option<(&'k str, BudgetKey)> {
    let rest = key.strip_prefix(namespace)?.strip_prefix(':')?;
    let (bot_id, rest) = rest.split_once(':')?;
    if bot_id.is_empty() || !bot_id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (kind, chat) = match rest.split_once(':') {
        Some((kind, chat)) => (kind, Some(chat)),
        None => (rest, None),
    };
    let kind = match (kind, chat) {
        ("g", None) => BudgetKey::Global,
        ("p", None) => BudgetKey::Paid,
        ("pb", None) => BudgetKey::BotPause,
        ("lf", None) => BudgetKey::LastFlood,
        ("c", Some(_)) => BudgetKey::ChatSlots,
        ("s", Some(_)) => BudgetKey::ChatSends,
        ("pc", Some(_)) => BudgetKey::ChatPause,
        _ => return None,
    };
    Some((bot_id, kind))
}

/// The numeric id of a bot token (`123456:secret` → `123456`): what budgets are keyed by.
pub fn bot_id(token: &str) -> &str {
    token.split_once(':').map_or(token, |(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_budget_key_reads_back_as_what_it_is() {
        let keys = BotKeys::new("tgd", "123");
        let cases = [
            (keys.global(false), BudgetKey::Global),
            (keys.global(true), BudgetKey::Paid),
            (keys.bot_pause(), BudgetKey::BotPause),
            (keys.last_flood(), BudgetKey::LastFlood),
            (keys.chat_slots(&-100123), BudgetKey::ChatSlots),
            (keys.chat_sends(&"@news"), BudgetKey::ChatSends),
            (keys.chat_pause(&42), BudgetKey::ChatPause),
        ];
        for (key, kind) in cases {
            assert_eq!(parse_budget_key("tgd", &key), Some(("123", kind)), "{key}");
        }
        assert_eq!(keys.chat_slots(&42), "tgd:123:c:42");
        assert_eq!(parse_budget_key("tgd", "tgd:req:abc"), None);
        assert_eq!(parse_budget_key("tgd", &keys.file_id("ab12")), None, "not a budget");
        assert_eq!(parse_budget_key("tgd", &request_claim("tgd", "r-1")), None);
        assert_eq!(parse_budget_key("tgd", &suppression("tgd", "default", &42)), None);
        assert_eq!(parse_budget_key("tgd", "other:123:g"), None);
        assert_eq!(bot_id("123456:AAE-secret"), "123456");
    }
}
