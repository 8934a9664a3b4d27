//! Migration checks: both backends carry the same migrations, and each applies, reverts and
//! re-applies cleanly.

use std::collections::BTreeSet;
use std::time::Duration;

use chatgate::db::{migrations, DatabaseUrl, DbPool, PoolSettings};
use diesel::connection::SimpleConnection;
use diesel::Connection;

fn names(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("read {dir}: {err}"))
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn both_backends_have_the_same_migration_names() {
    let sqlite = names(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"));
    let postgres = names(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"));
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, postgres);
    for name in &sqlite {
        for backend in ["sqlite", "postgres"] {
            for file in ["up.sql", "down.sql"] {
                let path = format!(
                    "{}/migrations/{backend}/{name}/{file}",
                    env!("CARGO_MANIFEST_DIR")
                );
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                assert!(!text.trim().is_empty(), "{path} is empty");
            }
        }
    }
}

/// Diesel orders and records migrations by the version before the first `_`: two folders
/// with one version would make one of them silently never run (two branches once both chose
/// `2026-11-30-000001`).
#[test]
fn every_migration_has_its_own_version() {
    let names = names(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"));
    let mut versions = BTreeSet::new();
    for name in &names {
        let version = name.split('_').next().unwrap_or(name);
        assert!(
            versions.insert(version.to_string()),
            "two migrations share the version {version}: rename one ({name})"
        );
    }
}

fn pool(url: &str) -> DbPool {
    DbPool::new(
        &DatabaseUrl::parse(url),
        &PoolSettings {
            max_size: 2,
            connection_timeout: Duration::from_secs(10),
            retry: Default::default(),
        },
    )
}

fn up_down_up(url: &str) {
    let pool = pool(url);
    let mut conn = pool.checkout().expect("connect");
    let applied = migrations::run_pending(&mut conn).expect("first run");
    assert!(!applied.is_empty(), "nothing applied to an empty database");
    assert!(
        migrations::run_pending(&mut conn)
            .expect("second run")
            .is_empty(),
        "second run not a no-op"
    );
    let reverted = migrations::revert_all(&mut conn).expect("revert all");
    assert_eq!(reverted, applied.len());
    let again = migrations::run_pending(&mut conn).expect("re-apply");
    assert_eq!(again, applied);
}

#[test]
fn sqlite_in_memory_up_down_up() {
    up_down_up(":memory:");
}

#[test]
fn sqlite_empty_file_applies_once_then_is_a_no_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("fresh.db").to_string_lossy().into_owned();
    up_down_up(&url);
    // A new process (new pool) finds nothing left to do.
    let mut conn = pool(&url).checkout().expect("connect");
    assert!(migrations::run_pending(&mut conn)
        .expect("rerun")
        .is_empty());
}

#[test]
#[ignore = "needs TEST_POSTGRES_URL"]
fn postgres_empty_database_up_down_up() {
    let Some(base) = std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        panic!(
            "this test needs PostgreSQL: set TEST_POSTGRES_URL \
             (e.g. postgres://postgres@127.0.0.1:5432/test) or run it through .ci/run"
        );
    };
    // A whole fresh database, as an operator's first deployment would see.
    let name = format!("chatgate_mig_{}", uuid::Uuid::new_v4().simple());
    let mut admin = diesel::PgConnection::establish(&base).expect("connect");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    let url = match base.rfind('/') {
        Some(slash) if base[..slash].contains("://") && !base[..slash].ends_with('/') => {
            let query = base[slash..]
                .find('?')
                .map(|q| &base[slash + q..])
                .unwrap_or("");
            format!("{}/{name}{query}", &base[..slash])
        }
        _ => panic!("TEST_POSTGRES_URL must name a database: {base}"),
    };
    up_down_up(&url);
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}
