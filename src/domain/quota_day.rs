use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};

/// A UTC calendar day, the unit a daily quota is counted in. Stored as `YYYY-MM-DD` so rows
/// read the same on both backends and sort by date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuotaDay(NaiveDate);

impl QuotaDay {
    pub fn of(now: DateTime<Utc>) -> QuotaDay {
        QuotaDay(now.date_naive())
    }

    pub fn today() -> QuotaDay {
        QuotaDay::of(Utc::now())
    }

    /// The day after; saturates at the last representable date.
    pub fn next(&self) -> QuotaDay {
        QuotaDay(self.0.succ_opt().unwrap_or(self.0))
    }

    /// The day before; saturates at the first representable date.
    pub fn previous(&self) -> QuotaDay {
        QuotaDay(self.0.pred_opt().unwrap_or(self.0))
    }

    pub fn as_key(&self) -> String {
        self.0.format("%Y-%m-%d").to_string()
    }

    /// When the day ends: the next day's 00:00 UTC, when its quota resets.
    pub fn ends_at(&self) -> DateTime<Utc> {
        self.next().0.and_time(NaiveTime::MIN).and_utc()
    }

    /// Time from `now` until the next UTC midnight: when a user over quota may try again.
    pub fn until_next_day(now: DateTime<Utc>) -> Duration {
        let tomorrow = now
            .date_naive()
            .checked_add_days(Days::new(1))
            .map(|day| day.and_time(NaiveTime::MIN).and_utc());
        match tomorrow {
            Some(midnight) => (midnight - now).to_std().unwrap_or(Duration::from_secs(1)),
            None => Duration::from_secs(86_400),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn key_is_iso_date_in_utc() {
        let now = Utc
            .with_ymd_and_hms(2026, 3, 9, 23, 59, 59)
            .single()
            .expect("date");
        assert_eq!(QuotaDay::of(now).as_key(), "2026-03-09");
    }

    #[test]
    fn a_day_ends_at_the_next_midnight() {
        let now = Utc
            .with_ymd_and_hms(2026, 12, 31, 23, 59, 59)
            .single()
            .expect("date");
        let midnight = Utc
            .with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
            .single()
            .expect("date");
        assert_eq!(QuotaDay::of(now).ends_at(), midnight);
        assert_eq!(
            QuotaDay::of(midnight).ends_at(),
            midnight + chrono::Days::new(1)
        );
    }

    #[test]
    fn retry_until_midnight() {
        let now = Utc
            .with_ymd_and_hms(2026, 3, 9, 23, 0, 0)
            .single()
            .expect("date");
        assert_eq!(QuotaDay::until_next_day(now), Duration::from_secs(3600));
        let midnight = Utc
            .with_ymd_and_hms(2026, 3, 10, 0, 0, 0)
            .single()
            .expect("date");
        assert_eq!(
            QuotaDay::until_next_day(midnight),
            Duration::from_secs(86_400)
        );
    }
}
