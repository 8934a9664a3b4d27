//! `GET /admin`: the dashboard page is public, never cached, and locked down by its CSP; the
//! files it loads are served too.

use crate::helpers::{spawn_app, TestApp};

async fn fetch(app: &TestApp, path: &str) -> (u16, awc::http::header::HeaderMap, String) {
    let mut response = app
        .client()
        .get(app.url(path))
        .send()
        .await
        .expect("request");
    let body = response.body().await.expect("body");
    (
        response.status().as_u16(),
        response.headers().clone(),
        String::from_utf8(body.to_vec()).expect("utf-8"),
    )
}

fn header<'a>(headers: &'a awc::http::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[actix_web::test]
async fn admin_page_is_html_with_a_strict_csp_and_needs_no_token() {
    let app = spawn_app().await;
    let (status, headers, body) = fetch(&app, "/admin").await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").starts_with("text/html"));
    assert_eq!(header(&headers, "cache-control"), "no-store");
    let csp = header(&headers, "content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self' ws: wss:"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(body.contains("<title>chatgate"), "{body}");
}

#[actix_web::test]
async fn every_file_the_page_references_is_served() {
    let app = spawn_app().await;
    let (_, _, page) = fetch(&app, "/admin").await;
    let referenced: Vec<&str> = page
        .split("=\"/admin/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or_default())
        .collect();
    assert_eq!(referenced, ["dashboard.css", "dashboard.js"]);
    for (file, content_type) in [
        ("dashboard.css", "text/css"),
        ("dashboard.js", "text/javascript"),
    ] {
        let (status, headers, body) = fetch(&app, &format!("/admin/{file}")).await;
        assert_eq!(status, 200, "{file}");
        assert!(header(&headers, "content-type").starts_with(content_type));
        assert_eq!(header(&headers, "cache-control"), "no-store");
        assert!(!body.is_empty());
    }
}

#[actix_web::test]
async fn root_redirects_to_the_dashboard() {
    let app = spawn_app().await;
    let client = awc::Client::builder().disable_redirects().finish();
    let response = client.get(app.url("/")).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 302);
    assert_eq!(header(response.headers(), "location"), "/admin");
    // A client that follows redirects lands on the page.
    let (status, _, body) = fetch(&app, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>chatgate"), "{body}");
}
