//! The OpenAI-compatible API: `GET /v1/models` (and, with the providers, chat completions).

use actix_web::{get, web, HttpResponse};
use serde::Serialize;

use crate::auth::UserIdentity;
use crate::startup::AppState;

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

#[get("/v1/models")]
pub async fn list_models(_caller: UserIdentity, state: web::Data<AppState>) -> HttpResponse {
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
