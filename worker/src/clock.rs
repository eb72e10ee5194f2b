//! Wall-clock milliseconds and tokio `Instant`s, converted both ways: headers cross processes (and
//! machines) as Unix milliseconds, while pacing and waits use monotonic instants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The wall-clock milliseconds of `instant`.
pub(crate) fn ms_from_instant(instant: Instant) -> u64 {
    let now = Instant::now();
    let wall = now_ms();
    if instant >= now {
        wall + (instant - now).as_millis() as u64
    } else {
        wall.saturating_sub((now - instant).as_millis() as u64)
    }
}

/// The instant of wall-clock milliseconds `ms` (now, for a time too far in the past to represent).
pub(crate) fn instant_from_ms(ms: u64) -> Instant {
    let now = Instant::now();
    let wall = now_ms();
    if ms >= wall {
        now + Duration::from_millis(ms - wall)
    } else {
        now.checked_sub(Duration::from_millis(wall - ms)).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_milliseconds_round_trip() {
        let later = Instant::now() + Duration::from_secs(30);
        let back = instant_from_ms(ms_from_instant(later));
        let error = if back > later { back - later } else { later - back };
        assert!(error < Duration::from_millis(5), "{error:?}");
        assert!(instant_from_ms(0) <= Instant::now());
    }
}
