//! Turns the `data` of each SSE event of a `chat.completion.chunk` stream into provider events.
//! Pure: fed event by event, so it is tested without a network.

use std::collections::VecDeque;

use serde::Deserialize;

use crate::domain::message::RawJson;
use crate::error::AppError;
use crate::providers::{ProviderEvent, Usage};

/// How much of an upstream error text reaches the log.
const LOGGED_ERROR_CHARS: usize = 200;
/// Token counts are clamped to 0 ..= this: a count beyond it is an upstream's bug, and must
/// not overflow the sums and columns it flows into.
pub const MAX_REPORTED_TOKENS: u64 = 1 << 31;

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
    index: Option<u64>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    logprobs: Option<RawJson>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<RawJson>,
}

/// Counts as numbers of any size or sign, so a wild value is clamped instead of failing the
/// whole reply.
#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: Option<serde_json::Number>,
    #[serde(default)]
    completion_tokens: Option<serde_json::Number>,
}

/// A reported count within 0 ..= [`MAX_REPORTED_TOKENS`]; others are clamped, and logged.
fn token_count(value: Option<&serde_json::Number>, field: &str, model: &str) -> u64 {
    let Some(value) = value else { return 0 };
    if let Some(n) = value.as_u64().filter(|n| *n <= MAX_REPORTED_TOKENS) {
        return n;
    }
    let negative = value.as_i64().is_some_and(|n| n < 0)
        || value.as_f64().is_some_and(|f| f.is_sign_negative());
    let clamped = match value.as_f64() {
        Some(f) if !negative && f <= MAX_REPORTED_TOKENS as f64 => f as u64,
        _ if negative => 0,
        _ => MAX_REPORTED_TOKENS,
    };
    log::warn!("event=upstream_usage_clamped model={model} field={field} reported={value} clamped={clamped}");
    clamped
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
        // With `n` > 1 the choices' chunks interleave; the reply is the first choice.
        let first = chunk
            .choices
            .into_iter()
            .find(|c| c.index.unwrap_or(0) == 0);
        if let Some(choice) = first {
            if let Some(delta) = choice.delta {
                // The first chunk usually carries only the role, with empty content.
                if let Some(content) = delta.content.filter(|c| !c.is_empty()) {
                    out.push_back(ProviderEvent::Delta(content));
                }
                if let Some(refusal) = delta.refusal.filter(|r| !r.is_empty()) {
                    out.push_back(ProviderEvent::Refusal(refusal));
                }
                if let Some(calls) = delta.tool_calls.filter(|c| c.get() != "null") {
                    out.push_back(ProviderEvent::ToolCalls(calls));
                }
            }
            if let Some(logprobs) = choice.logprobs.filter(|l| l.get() != "null") {
                out.push_back(ProviderEvent::Logprobs(logprobs));
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                out.push_back(ProviderEvent::Finish(reason));
            }
        }
        if let Some(usage) = chunk.usage {
            out.push_back(ProviderEvent::Usage(Usage {
                prompt_tokens: token_count(usage.prompt_tokens.as_ref(), "prompt_tokens", model),
                completion_tokens: token_count(
                    usage.completion_tokens.as_ref(),
                    "completion_tokens",
                    model,
                ),
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
                ProviderEvent::Finish("stop".into()),
                ProviderEvent::Usage(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 2
                }),
            ]
        );
        assert!(decoder.done && decoder.finished);
    }

    fn raw(text: &str) -> RawJson {
        RawJson(serde_json::value::RawValue::from_string(text.into()).expect("json"))
    }

    #[test]
    fn tool_calls_refusal_and_logprobs_pass_through_as_sent() {
        let (events, _) = decode_all(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"refusal":"no"},"logprobs":{"content":null,"refusal":[{"token":"no","logprob":-0.5,"bytes":[110,111],"top_logprobs":[]}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ]);
        assert_eq!(
            events.expect("valid"),
            vec![
                ProviderEvent::ToolCalls(raw(
                    r#"[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]"#
                )),
                ProviderEvent::Refusal("no".into()),
                ProviderEvent::Logprobs(raw(
                    r#"{"content":null,"refusal":[{"token":"no","logprob":-0.5,"bytes":[110,111],"top_logprobs":[]}]}"#
                )),
                ProviderEvent::Finish("tool_calls".into()),
            ]
        );
    }

    #[test]
    fn only_the_first_choice_is_the_reply() {
        let (events, _) = decode_all(&[
            r#"{"choices":[{"index":1,"delta":{"content":"other"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"mine"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}"#,
        ]);
        assert_eq!(
            events.expect("valid"),
            vec![ProviderEvent::Delta("mine".into())]
        );
    }

    #[test]
    fn token_counts_outside_the_range_are_clamped() {
        for (prompt, completion, expected) in [
            ("-5", "3", (0, 3)),
            (
                "2147483649",
                "2147483648",
                (MAX_REPORTED_TOKENS, MAX_REPORTED_TOKENS),
            ),
            ("99999999999999999999999", "-1e30", (MAX_REPORTED_TOKENS, 0)),
            ("12.0", "null", (12, 0)),
        ] {
            let data = format!(
                r#"{{"choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion}}}}}"#
            );
            let (events, _) = decode_all(&[&data]);
            assert_eq!(
                events.expect(&data),
                vec![ProviderEvent::Usage(Usage {
                    prompt_tokens: expected.0,
                    completion_tokens: expected.1,
                })],
                "{data}"
            );
        }
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
