use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use super::QuotaDay;

/// What admission decided about a chat's daily quota unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaTake {
    /// A unit is the chat's; it is given back if the chat fails before any delta.
    Taken(QuotaStanding),
    /// Every unit of the day is used or held by a chat.
    Exceeded {
        limit: i64,
    },
    Disabled,
}

/// A user's standing on one day's quota as the instance that admitted a chat knows it, with
/// that chat counted: units settled in the database by every instance (as of this instance's
/// last write) plus the units this instance's chats kept since. Chats another instance
/// admitted since its last settlement are missing, so across instances `used` may lag by up
/// to one flush interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaStanding {
    pub used: i64,
    pub limit: i64,
}

/// The receipt a chat's last frame (and the OpenAI API's headers) carry: the standing, and
/// when the day it was counted in ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct QuotaReceipt {
    pub used: i64,
    pub limit: i64,
    #[serde(serialize_with = "rfc3339")]
    pub resets_at: DateTime<Utc>,
}

impl QuotaReceipt {
    pub fn new(day: QuotaDay, standing: QuotaStanding) -> QuotaReceipt {
        QuotaReceipt {
            used: standing.used,
            limit: standing.limit,
            resets_at: day.ends_at(),
        }
    }

    /// The receipt of a chat refused because the day's units are all used or held.
    pub fn exhausted(day: QuotaDay, limit: i64) -> QuotaReceipt {
        QuotaReceipt::new(day, QuotaStanding { used: limit, limit })
    }

    /// `resets_at` as RFC 3339 in UTC, whole seconds: `2026-12-01T00:00:00Z`.
    pub fn resets_at_text(&self) -> String {
        self.resets_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

fn rfc3339<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn receipt_serializes_as_the_contract_says() {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 30, 23, 59, 59)
            .single()
            .expect("date");
        let receipt = QuotaReceipt::new(QuotaDay::of(now), QuotaStanding { used: 2, limit: 5 });
        assert_eq!(
            serde_json::to_string(&receipt).expect("json"),
            r#"{"used":2,"limit":5,"resets_at":"2026-12-01T00:00:00Z"}"#
        );
        assert_eq!(receipt.resets_at_text(), "2026-12-01T00:00:00Z");
        assert_eq!(
            QuotaReceipt::exhausted(QuotaDay::of(now), 5),
            QuotaReceipt { used: 5, ..receipt }
        );
    }
}
