//! Opaque cursors and page sizes shared by every admin list.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::AppError;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1_000;

/// The page size asked for, defaulted and bounded.
pub fn page_limit(limit: Option<usize>) -> Result<usize, AppError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(AppError::BadRequest("limit must be at least 1".into())),
        Some(n) if n > MAX_LIMIT => Err(AppError::BadRequest(format!(
            "limit must be at most {MAX_LIMIT}"
        ))),
        Some(n) => Ok(n),
    }
}

/// Encodes the position after the last item of a page. Opaque to clients by design: only the
/// server interprets it, so its shape can change.
pub fn encode_cursor<T: Serialize>(position: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(position).unwrap_or_default())
}

pub fn decode_cursor<T: DeserializeOwned>(cursor: Option<&str>) -> Result<Option<T>, AppError> {
    let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| AppError::BadRequest("cursor is not one this server issued".into()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| AppError::BadRequest("cursor is not one this server issued".into()))
}

/// `{"items":[…],"next_cursor":…}`: the list shape of every admin endpoint.
#[derive(Serialize, ToSchema)]
pub struct Page<T: Serialize> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T: Serialize> Page<T> {
    /// From up to `limit + 1` fetched items: the extra one only says another page exists.
    pub fn from_fetched<P: Serialize>(
        mut items: Vec<T>,
        limit: usize,
        position: impl Fn(&T) -> P,
    ) -> Page<T> {
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = if more {
            items.last().map(|last| encode_cursor(&position(last)))
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = encode_cursor(&(5i64, "abc"));
        assert_eq!(
            decode_cursor::<(i64, String)>(Some(&cursor)).expect("decode"),
            Some((5, "abc".into()))
        );
        assert!(decode_cursor::<(i64, String)>(Some("!!!")).is_err());
        assert!(decode_cursor::<(i64, String)>(Some(&encode_cursor(&"x"))).is_err());
        assert_eq!(decode_cursor::<(i64, String)>(None).expect("none"), None);
    }

    #[test]
    fn page_knows_when_there_is_more() {
        let page = Page::from_fetched(vec![1, 2, 3], 2, |n| *n);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(
            decode_cursor::<i32>(page.next_cursor.as_deref()).expect("cursor"),
            Some(2)
        );
        let last = Page::from_fetched(vec![1, 2], 2, |n| *n);
        assert!(last.next_cursor.is_none());
        assert!(page_limit(Some(0)).is_err() && page_limit(Some(1001)).is_err());
    }
}
