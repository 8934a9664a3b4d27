//! `/admin/ws` applies the origin rules of `/ws`: a browser page from an origin that is not
//! allowed cannot open the live feed with an admin's token.

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::ws_client::{connect_with, ConnectOptions};

async fn open_feed(app: &TestApp, token: &str, origin: Option<&str>) -> Result<(), u16> {
    connect_with(
        app,
        ConnectOptions {
            token: Some(token),
            origin,
            ..Default::default()
        }
        .at("/admin/ws"),
    )
    .await
    .map(|_| ())
}

#[actix_web::test]
async fn admin_feed_refuses_origins_that_may_not_open_websockets() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.server.allowed_origins = vec!["https://app.test".into()]
    })
    .await;
    let token = app.admin_token("root");
    assert_eq!(
        open_feed(&app, &token, Some("https://evil.test")).await,
        Err(403)
    );
    assert_eq!(
        open_feed(&app, &token, Some("https://app.test")).await,
        Ok(())
    );
    assert_eq!(
        open_feed(&app, &token, None).await,
        Ok(()),
        "no Origin: not a browser"
    );
    let own = format!("http://{}", app.addr);
    assert_eq!(
        open_feed(&app, &token, Some(&own)).await,
        Ok(()),
        "own origin"
    );

    // The rule follows a runtime change of the list.
    let resp = app
        .client()
        .put(app.url("/admin/origins"))
        .bearer_auth(&token)
        .send_json(&serde_json::json!({"origins": ["https://evil.test"]}))
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        open_feed(&app, &token, Some("https://evil.test")).await,
        Ok(())
    );
    assert_eq!(
        open_feed(&app, &token, Some("https://app.test")).await,
        Err(403)
    );
}
