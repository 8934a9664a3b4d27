//! The OpenAI-compatible API: `GET /v1/models` and `POST /v1/chat/completions`. Chats run
//! through the same pipeline as WebSocket chats: same admission, deadlines and records.

mod reply;
mod request;
mod shapes;

use actix_web::{get, post, web, HttpResponse};
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use self::reply::ChatEvents;
use self::request::CompletionRequest;
use self::shapes::{Chunk, Completion, ReplyMeta};
use crate::app_state::AppState;
use crate::auth::UserIdentity;
use crate::chat::{ChatRequest, HistorySource};
use crate::error::AppError;
use crate::http::openapi::{ChatRefusals, UserRefusals};

#[derive(Serialize, ToSchema)]
pub struct ModelObject<'a> {
    #[schema(example = "echo")]
    id: &'a str,
    /// Always `model`.
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList<'a> {
    /// Always `list`.
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

/// The models this gateway serves, in OpenAI's list shape.
#[utoipa::path(
    tag = "chat",
    security(("bearer_jwt" = [])),
    responses((status = 200, description = "The models", body = ModelList), UserRefusals)
)]
#[get("/v1/models")]
pub async fn list_models(
    _caller: crate::http::active_user::ActiveUser,
    state: web::Data<AppState>,
) -> HttpResponse {
    let data = state
        .settings
        .models
        .iter()
        .map(|model| ModelObject {
            id: &model.name,
            object: "model",
            created: 0,
            owned_by: "chatgate",
        })
        .collect();
    HttpResponse::Ok().json(ModelList {
        object: "list",
        data,
    })
}

/// A chat in OpenAI's shapes: one `chat.completion`, or with `stream: true` server-sent
/// `chat.completion.chunk` events ending with `data: [DONE]`. A failure after the stream
/// began is sent as one `data: {"error":{"code","message"}}` event, and the stream ends.
/// Replies (and `quota_exceeded` refusals) carry the user's quota standing in
/// `x-chatgate-quota-*` headers.
#[utoipa::path(
    tag = "chat",
    security(("bearer_jwt" = [])),
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The reply", content(
            (Completion = "application/json"),
            (Chunk = "text/event-stream"),
        ), headers(
            ("x-chatgate-quota-used" = i64, description = "The user's chats today with this one, as the answering instance knows them (another instance's may lag by one flush interval)"),
            ("x-chatgate-quota-limit" = i64, description = "The user's daily limit"),
            ("x-chatgate-quota-reset" = String, description = "When the quota resets: the next 00:00 UTC, RFC 3339 (`2026-12-01T00:00:00Z`)")
        )),
        ChatRefusals,
    )
)]
#[post("/v1/chat/completions")]
pub async fn chat_completions(
    caller: UserIdentity,
    state: web::Data<AppState>,
    body: web::Json<CompletionRequest>,
) -> Result<HttpResponse, AppError> {
    let received = Instant::now();
    let request = body.into_inner().parse()?;
    let meta = ReplyMeta::new(&request.model, request.include_usage);
    let handle = state.pipeline.start(ChatRequest {
        user: caller.0.user,
        model: request.model,
        history: HistorySource::Given(request.messages),
        params: request.params,
        received,
        ends_at_shutdown: request.stream,
    });
    if request.stream {
        let events = ChatEvents::new(handle, Some(state.shutdown.clone()));
        reply::stream(events, meta).await
    } else {
        // A whole reply is an ordinary in-flight request: shutdown lets it finish.
        reply::complete(ChatEvents::new(handle, None), meta).await
    }
}
