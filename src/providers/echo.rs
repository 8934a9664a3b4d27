//! The built-in `echo` model: streams the last user message back word by word.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::time::Sleep;

use super::{ModelRequest, Provider, ProviderEvent, ProviderStream, Usage};
use crate::domain::message::{count_words, ChatRole};
use crate::error::AppError;

pub struct EchoProvider {
    delay: Duration,
}

impl EchoProvider {
    pub fn new(delay: Duration) -> EchoProvider {
        EchoProvider { delay }
    }
}

impl Provider for EchoProvider {
    fn stream(&self, request: ModelRequest) -> ProviderStream {
        let messages = request.messages;
        let prompt_tokens = count_words(&messages);
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.role == ChatRole::User)
            .map(|m| m.content.clone())
            .unwrap_or_else(|| Arc::from(""));
        Box::pin(EchoStream {
            text: last_user,
            cursor: 0,
            emitted: 0,
            prompt_tokens,
            delay: self.delay,
            sleep: None,
            finished: false,
        })
    }
}

/// Walks the text without copying it up front; each word becomes one delta, preceded by a
/// space after the first.
struct EchoStream {
    text: Arc<str>,
    cursor: usize,
    emitted: u64,
    prompt_tokens: u64,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    finished: bool,
}

impl EchoStream {
    fn next_word(&mut self) -> Option<(usize, usize)> {
        let rest = &self.text[self.cursor..];
        let start = rest.find(|c: char| !c.is_whitespace())? + self.cursor;
        let len = self.text[start..]
            .find(char::is_whitespace)
            .unwrap_or(self.text.len() - start);
        Some((start, start + len))
    }
}

impl Stream for EchoStream {
    type Item = Result<ProviderEvent, AppError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let Some((start, end)) = self.next_word() else {
            self.finished = true;
            let usage = Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.emitted,
            };
            return Poll::Ready(Some(Ok(ProviderEvent::Usage(usage))));
        };
        if !self.delay.is_zero() {
            let delay = self.delay;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let word = &self.text[start..end];
        let delta = if self.emitted == 0 {
            word.to_string()
        } else {
            format!(" {word}")
        };
        self.cursor = end;
        self.emitted += 1;
        Poll::Ready(Some(Ok(ProviderEvent::Delta(delta))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::message::ChatMessage;
    use futures_util::StreamExt;

    async fn collect(provider: &EchoProvider, messages: Vec<ChatMessage>) -> (Vec<String>, Usage) {
        let mut deltas = Vec::new();
        let mut usage = None;
        let mut stream = provider.stream(ModelRequest {
            messages,
            ..ModelRequest::default()
        });
        while let Some(event) = stream.next().await {
            match event.expect("echo never fails") {
                ProviderEvent::Delta(d) => deltas.push(d),
                ProviderEvent::Usage(u) => usage = Some(u),
                other => panic!("echo sends only deltas and usage: {other:?}"),
            }
        }
        (deltas, usage.expect("usage"))
    }

    #[actix_web::test]
    async fn echoes_the_last_user_message_word_by_word() {
        let provider = EchoProvider::new(Duration::ZERO);
        let history = vec![
            ChatMessage::user("earlier words here"),
            ChatMessage::assistant("earlier words here"),
            ChatMessage::user("  the quick\tbrown\n fox "),
        ];
        let (deltas, usage) = collect(&provider, history).await;
        assert_eq!(deltas, vec!["the", " quick", " brown", " fox"]);
        assert_eq!(deltas.concat(), "the quick brown fox");
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 4
            }
        );
    }

    #[actix_web::test]
    async fn echo_reads_text_parts_and_ignores_the_others() {
        let provider = EchoProvider::new(Duration::ZERO);
        let content = serde_json::value::RawValue::from_string(
            r#"[{"type":"text","text":"first part"},{"type":"image_url","image_url":{"url":"https://x/y.png"}},{"type":"text","text":"second"}]"#.into(),
        )
        .expect("json");
        let message = ChatMessage::with_content(ChatRole::User, &content).expect("valid");
        let (deltas, _) = collect(&provider, vec![message]).await;
        assert_eq!(deltas.concat(), "first part second");
    }

    #[actix_web::test]
    async fn empty_or_blank_message_gives_no_deltas() {
        let provider = EchoProvider::new(Duration::ZERO);
        let (deltas, usage) = collect(&provider, vec![ChatMessage::user("   ")]).await;
        assert!(deltas.is_empty());
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 0,
                completion_tokens: 0
            }
        );
    }

    #[actix_web::test]
    async fn delay_applies_before_each_delta() {
        tokio::time::pause();
        let provider = EchoProvider::new(Duration::from_millis(50));
        let start = tokio::time::Instant::now();
        let (deltas, _) = collect(&provider, vec![ChatMessage::user("a b c")]).await;
        assert_eq!(deltas.len(), 3);
        assert!(start.elapsed() >= Duration::from_millis(150));
    }
}
