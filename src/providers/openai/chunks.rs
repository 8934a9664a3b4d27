//! Turns the `data` of each SSE event of a `chat.completion.chunk` stream into provider events.
//! Pure: fed event by event, so it is tested without a network.

use std::collections::VecDeque;

use serde::Deserialize;

use crate::error::AppError;
use crate::providers::{ProviderEvent, Usage};

/// How much of an upstream error text reaches the log.
const LOGGED_ERROR_CHARS: usize = 200;

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Debug, Default)]
pub struct ChunkDecoder {
    /// `data: [DONE]` arrived: the reply is complete and nothing after it matters.
    pub done: bool,
    /// A choice carried a `finish_reason`: the reply is complete even if `[DONE]` never comes
    /// (some servers end the body right after it).
    pub finished: bool,
}

impl ChunkDecoder {
    /// Decodes one event's data, queueing what it carries. `model` names the model in logs.
    pub fn decode(
        &mut self,
        data: &str,
        model: &str,
        out: &mut VecDeque<ProviderEvent>,
    ) -> Result<(), AppError> {
        if self.done {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|err| {
            log::warn!("event=upstream_bad_chunk model={model} error={err}");
            AppError::UpstreamError("the model's upstream sent a malformed stream chunk".into())
        })?;
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            let text: String = error.to_string().chars().take(LOGGED_ERROR_CHARS).collect();
            log::warn!("event=upstream_stream_error model={model} upstream_error={text}");
            return Err(AppError::UpstreamError(
                "the model's upstream reported an error mid-reply".into(),
            ));
        }
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(content) = choice.delta.and_then(|d| d.content) {
                // The first chunk usually carries only the role, with empty content.
                if !content.is_empty() {
                    out.push_back(ProviderEvent::Delta(content));
                }
            }
            if choice.finish_reason.is_some() {
                self.finished = true;
            }
        }
        if let Some(usage) = chunk.usage {
            out.push_back(ProviderEvent::Usage(Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            }));
        }
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        self.done || self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn decode_all(events: &[&str]) -> (Result<Vec<ProviderEvent>, AppError>, ChunkDecoder) {
        let mut decoder = ChunkDecoder::default();
        let mut out = VecDeque::new();
        for data in events {
            if let Err(err) = decoder.decode(data, "m", &mut out) {
                return (Err(err), decoder);
            }
        }
        (Ok(out.into_iter().collect()), decoder)
    }

    #[test]
    fn openai_stream_gives_deltas_then_usage() {
        let (events, decoder) = decode_all(&[
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
            "[DONE]",
        ]);
        assert_eq!(
            events.expect("valid"),
            vec![
                ProviderEvent::Delta("Hel".into()),
                ProviderEvent::Delta("lo".into()),
                ProviderEvent::Usage(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 2
                }),
            ]
        );
        assert!(decoder.done && decoder.finished);
    }

    #[test]
    fn nothing_after_done_is_read() {
        let (events, _) = decode_all(&["[DONE]", "not json"]);
        assert!(events.expect("valid").is_empty());
    }

    #[test]
    fn finish_reason_alone_completes_the_reply() {
        let (_, decoder) =
            decode_all(&[r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}"#]);
        assert!(decoder.is_complete() && !decoder.done);
    }

    #[test]
    fn malformed_json_and_error_objects_are_upstream_errors() {
        for bad in [
            "{not json",
            r#"{"choices":"many"}"#,
            r#"{"error":{"message":"overloaded; key sk-123"}}"#,
        ] {
            let (events, _) = decode_all(&[bad]);
            let err = events.expect_err(bad);
            assert_eq!(err.code(), ErrorCode::UpstreamError, "{bad}");
            assert!(!err.client_message().contains("sk-123"));
        }
    }
}
