//! Telegram's limits as the sandbox enforces them: sliding windows of accepted messages per bot —
//! globally (or on the paid-broadcast budget), per private chat, per group. An album or a bulk copy
//! counts one per message: it needs room for all of them in the bot's window, and is let into a
//! chat whose window has room for one (Telegram sends albums to private chats), after which its
//! messages fill that window. Edits count against their chat's window only.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::SandboxLimits;

/// How a call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cost {
    /// Sends this many messages.
    Messages(u32),
    /// An edit.
    ChatOnly,
}

/// Sliding-window arrival logs, per (bot, window kind, key).
#[derive(Default)]
pub(super) struct Windows {
    logs: HashMap<(String, &'static str, String), VecDeque<Instant>>,
}

impl Windows {
    fn log(
        &mut self,
        key: (String, &'static str, String),
        window: Duration,
        now: Instant,
    ) -> &mut VecDeque<Instant> {
        let log = self.logs.entry(key).or_default();
        while log.front().is_some_and(|t| now.duration_since(*t) >= window) {
            log.pop_front();
        }
        log
    }

    /// Admits a call for `chat` that costs `cost`, recording it; otherwise the `retry_after` (in
    /// whole seconds) of the 429 to answer.
    pub(super) fn admit(
        &mut self,
        limits: &SandboxLimits,
        bot_id: &str,
        chat: &str,
        paid: bool,
        cost: Cost,
        now: Instant,
    ) -> Result<(), u64> {
        let n = match cost {
            Cost::Messages(n) => n.max(1) as usize,
            Cost::ChatOnly => 1,
        };
        let jitter = Duration::from_millis(limits.jitter_ms);
        let group = chat.starts_with('-') || chat.starts_with('@');
        let (kind, limit, window) = if group {
            ("group", limits.group_per_min, Duration::from_secs(60).saturating_sub(jitter))
        } else {
            ("chat", limits.chat_per_sec, Duration::from_secs(1).saturating_sub(jitter))
        };
        let chat_key = (bot_id.to_string(), kind, chat.to_string());
        let chat_log = self.log(chat_key.clone(), window, now);
        if chat_log.len() >= limit.max(1) as usize {
            return Err(wait(chat_log, window, now));
        }
        if let Cost::Messages(_) = cost {
            let (kind, limit) =
                if paid { ("paid", limits.paid_per_sec) } else { ("global", limits.global_per_sec) };
            let second = Duration::from_secs(1).saturating_sub(jitter);
            let global = self.log((bot_id.to_string(), kind, String::new()), second, now);
            if global.len() + n > limit.max(1) as usize {
                return Err(wait(global, second, now));
            }
            global.extend(std::iter::repeat_n(now, n));
        }
        self.log(chat_key, window, now).extend(std::iter::repeat_n(now, n));
        Ok(())
    }
}

/// Whole seconds until the oldest entry of `log` leaves its window (at least 1).
fn wait(log: &VecDeque<Instant>, window: Duration, now: Instant) -> u64 {
    let oldest = log.front().copied().unwrap_or(now);
    window.saturating_sub(now.duration_since(oldest)).as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_album_needs_room_for_every_item_globally_and_fills_its_chat() {
        let limits = SandboxLimits::telegram();
        let mut windows = Windows::default();
        let t0 = Instant::now();
        for chat in 0..25 {
            windows.admit(&limits, "1", &chat.to_string(), false, Cost::Messages(1), t0).unwrap();
        }
        // 25 sent this second: an album of 10 does not fit the bot's 30, one of 5 does.
        assert!(windows.admit(&limits, "1", "100", false, Cost::Messages(10), t0).is_err());
        windows.admit(&limits, "1", "100", false, Cost::Messages(5), t0).unwrap();
        // The album filled its private chat's window.
        let later = t0 + Duration::from_secs(2);
        windows.admit(&limits, "1", "200", false, Cost::Messages(10), later).unwrap();
        assert!(windows.admit(&limits, "1", "200", false, Cost::ChatOnly, later).is_err());
    }
}
