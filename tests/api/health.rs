use crate::helpers::{backends, spawn_app_with};

#[actix_web::test]
async fn healthz_and_readyz_answer_200_on_every_backend() {
    for backend in backends("healthz_and_readyz") {
        let app = spawn_app_with(backend, |_| {}).await;
        let (status, body) = app.get("/healthz", None).await;
        assert_eq!(status, 200, "{backend:?}");
        assert_eq!(body["status"], "ok");
        let (status, body) = app.get("/readyz", None).await;
        assert_eq!(status, 200, "{backend:?}: {body}");
    }
}

#[actix_web::test]
async fn unknown_route_is_a_json_404() {
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |_| {}).await;
    let (status, body) = app.get("/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}
