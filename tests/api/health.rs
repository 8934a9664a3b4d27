use crate::helpers::{require_postgres, spawn_app_with, Backend};

#[actix_web::test]
async fn healthz_and_readyz_answer_200_on_every_backend() {
    healthz_and_readyz_answer_200_on_every_backend_on(Backend::Sqlite).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn healthz_and_readyz_answer_200_on_every_backend_postgres() {
    require_postgres();
    healthz_and_readyz_answer_200_on_every_backend_on(Backend::Postgres).await;
}

async fn healthz_and_readyz_answer_200_on_every_backend_on(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (status, body) = app.get("/healthz", None).await;
    assert_eq!(status, 200, "{backend:?}");
    assert_eq!(body["status"], "ok");
    let (status, body) = app.get("/readyz", None).await;
    assert_eq!(status, 200, "{backend:?}: {body}");
}

#[actix_web::test]
async fn unknown_route_is_a_json_404() {
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |_| {}).await;
    let (status, body) = app.get("/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}
