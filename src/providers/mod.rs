//! Models behind one streaming interface. A provider turns a conversation into a stream of
//! events; dropping the stream cancels the work (and closes any upstream connection).

pub mod echo;
pub mod openai;
pub mod sse;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;

use crate::config::{ModelSettings, ProviderKind, Settings};
use crate::domain::message::{ChatMessage, Params, RawJson};
use crate::error::AppError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What a model streams. Parts chatgate relays without reading stay as the upstream's JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderEvent {
    Delta(String),
    /// One chunk's `delta.tool_calls` fragments.
    ToolCalls(RawJson),
    /// Text of a refusal, streamed like content.
    Refusal(String),
    /// One chunk's `logprobs` object.
    Logprobs(RawJson),
    /// Why the model stopped (`stop`, `length`, `tool_calls`, `content_filter`, …).
    Finish(String),
    /// Token counts as the model reports them (at most once, usually last).
    Usage(Usage),
}

/// What a model is asked: the conversation, and request fields passed through as given.
#[derive(Clone, Debug, Default)]
pub struct ModelRequest {
    pub messages: Vec<ChatMessage>,
    /// Fields beyond `model`, `messages`, `stream` and `stream_options`; an `openai` upstream
    /// gets them unchanged, `echo` has no use for them.
    pub params: Params,
}

/// Not `Send`: streams live on the worker thread that started them (awc is thread-local).
pub type ProviderStream = Pin<Box<dyn Stream<Item = Result<ProviderEvent, AppError>>>>;

pub trait Provider: Send + Sync {
    fn stream(&self, request: ModelRequest) -> ProviderStream;
}

/// A served model: its settings and the provider that runs it.
#[derive(Clone)]
pub struct Model {
    pub name: Arc<str>,
    pub settings: ModelSettings,
    pub timeout: Duration,
    pub provider: Arc<dyn Provider>,
}

/// The models chatgate serves, by name. Immutable after start.
#[derive(Clone, Default)]
pub struct ModelCatalog {
    models: HashMap<String, Model>,
    names: Vec<String>,
}

impl ModelCatalog {
    pub fn from_settings(settings: &Settings) -> Result<ModelCatalog, AppError> {
        let mut catalog = ModelCatalog::default();
        for model in &settings.models {
            let timeout = Duration::from_secs(settings.model_timeout_secs(model));
            let provider: Arc<dyn Provider> = match model.provider {
                ProviderKind::Echo => Arc::new(echo::EchoProvider::new(Duration::from_millis(
                    model.delay_ms,
                ))),
                ProviderKind::OpenAi => Arc::new(openai::OpenAiProvider::new(model, timeout)?),
            };
            catalog.names.push(model.name.clone());
            catalog.models.insert(
                model.name.clone(),
                Model {
                    name: Arc::from(model.name.as_str()),
                    settings: model.clone(),
                    timeout,
                    provider,
                },
            );
        }
        Ok(catalog)
    }

    pub fn get(&self, name: &str) -> Option<&Model> {
        self.models.get(name)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}
