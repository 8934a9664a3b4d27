//! One place that sets up env_logger, for the binary and for tests.

/// `RUST_LOG` wins; otherwise the configured filter (TOML `rust_log`), else `info`.
pub fn init(configured_filter: Option<&str>) {
    let default = configured_filter.unwrap_or("info");
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .try_init();
}

/// For tests: quiet unless `RUST_LOG` asks, and never fails when called twice.
pub fn init_for_tests() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .is_test(true)
        .try_init();
}
