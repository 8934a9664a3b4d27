//! The one place that hides credentials in URLs before they are printed (logs, `check-config`,
//! error messages). It works on the text rather than a parsed `url::Url`, so everything but the
//! secrets is printed exactly as the operator wrote it (a parser would re-encode and normalise),
//! and a URL too broken to parse is still redacted instead of echoed whole.

/// Query parameter names (compared case-insensitively) whose values are credentials: libpq's
/// `password`/`sslpassword`, and the usual names for keys and tokens in HTTP URLs.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "sslpassword",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "auth_token",
    "api_key",
    "apikey",
    "key",
    "sig",
    "signature",
];

pub const REDACTED: &str = "[redacted]";

/// `url` with the userinfo password and every password-like query parameter replaced by
/// `[redacted]`; the user name, host, path and other parameters are kept.
pub fn redact_url(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        // Not a URL (e.g. a SQLite path): only a query string can carry a secret.
        None => ("", url),
    };
    let authority_end = if head.is_empty() {
        0
    } else {
        rest.find(['/', '?', '#']).unwrap_or(rest.len())
    };
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (tail, None),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&redact_query(query));
        }
        None => out.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret_param(name: &str) -> bool {
    // `api%5Fkey` and `api_key` are the same parameter to the server reading it.
    let decoded = name.replace("%5F", "_").replace("%5f", "_");
    SECRET_PARAMS
        .iter()
        .any(|secret| decoded.eq_ignore_ascii_case(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_password_is_hidden_and_user_kept() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/chat"),
            "postgres://app:[redacted]@db:5432/chat"
        );
        assert_eq!(
            redact_url("rediss://:hunter2@cache:6380/0"),
            "rediss://:[redacted]@cache:6380/0"
        );
        assert_eq!(
            redact_url("https://bob:hunter2@api.example.com/v1"),
            "https://bob:[redacted]@api.example.com/v1"
        );
    }

    #[test]
    fn password_in_userinfo_may_contain_at_signs_and_colons() {
        let shown = redact_url("postgresql://app:p@ss:w@rd@db/chat");
        assert_eq!(shown, "postgresql://app:[redacted]@db/chat");
    }

    #[test]
    fn password_like_query_parameters_are_hidden() {
        assert_eq!(
            redact_url(
                "postgres://db/chat?sslmode=require&password=hunter2&PassWd=x&sslpassword=y"
            ),
            "postgres://db/chat?sslmode=require&password=[redacted]&PassWd=[redacted]\
             &sslpassword=[redacted]"
        );
        assert_eq!(
            redact_url("http://u/v1?api_key=k1&token=t1&secret=s1&pass=p1&model=m#frag"),
            "http://u/v1?api_key=[redacted]&token=[redacted]&secret=[redacted]\
             &pass=[redacted]&model=m#frag"
        );
        assert_eq!(
            redact_url("redis://cache:6379/0?api%5Fkey=k"),
            "redis://cache:6379/0?api%5Fkey=[redacted]"
        );
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "postgres://app@db:5432/chat?sslmode=require",
            "redis://127.0.0.1:6379",
            "http://127.0.0.1:9000/v1",
            "chatgate.db",
            ":memory:",
            "sqlite:///var/lib/chatgate/chatgate.db",
            "https://host/path?passage=1&keyboard=2",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn a_sqlite_uri_query_is_redacted_too() {
        assert_eq!(
            redact_url("file:chat.db?mode=rwc&password=x"),
            "file:chat.db?mode=rwc&password=[redacted]"
        );
    }
}
