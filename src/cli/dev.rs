//! What `serve --dev` adds to a plain `serve`: a generated JWT secret handed over through a
//! file only the user can read (secrets never go to stdout or the log), and user limits high
//! enough that one developer with one token never hits them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::Settings;

/// Chats per user per window in dev mode, unless configured.
pub const DEV_USER_RATE_LIMIT: u32 = 100_000;
/// Chats per user per UTC day in dev mode, unless configured.
pub const DEV_DAILY_QUOTA: i64 = 10_000_000;

/// The generated secret on disk, mode 0600; removed when dropped (at exit).
#[derive(Debug)]
pub struct DevSecretFile {
    path: PathBuf,
}

impl DevSecretFile {
    /// Creates `dir/chatgate-dev-<pid>.secret`. `create_new` (O_EXCL) refuses an existing path,
    /// so a file or symlink planted in a shared temp dir is never written through.
    pub fn create(dir: &Path, secret: &str) -> std::io::Result<DevSecretFile> {
        let path = dir.join(format!("chatgate-dev-{}.secret", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let written = DevSecretFile { path };
        file.write_all(secret.as_bytes())?;
        Ok(written)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DevSecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Raises the user rate limit and daily quota that the operator did not set (in the
/// environment or the `CHATGATE_CONFIG` file); returns one line per setting, saying what it did.
pub fn lift_user_limits(
    settings: &mut Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let file_keys = config_file_keys(env);
    let configured = |var: &str| {
        env(var).is_some_and(|v| !v.trim().is_empty())
            || file_keys.contains_key(&var.trim_start_matches("CHATGATE_").to_lowercase())
    };
    let limits = &mut settings.limits;
    let mut lines = Vec::new();
    if configured("CHATGATE_USER_RATE_LIMIT") {
        lines.push(format!(
            "user rate limit {} per {} s (configured)",
            limits.user_rate_limit, limits.user_rate_window_secs
        ));
    } else {
        limits.user_rate_limit = DEV_USER_RATE_LIMIT;
        lines.push(format!(
            "user rate limit lifted to {} per {} s (set CHATGATE_USER_RATE_LIMIT to choose)",
            limits.user_rate_limit, limits.user_rate_window_secs
        ));
    }
    if configured("CHATGATE_DAILY_QUOTA") {
        lines.push(format!("daily quota {} (configured)", limits.daily_quota));
    } else {
        limits.daily_quota = DEV_DAILY_QUOTA;
        lines.push(format!(
            "daily quota lifted to {} (set CHATGATE_DAILY_QUOTA to choose)",
            limits.daily_quota
        ));
    }
    lines
}

/// The top-level keys of the TOML file named by `CHATGATE_CONFIG`; empty when there is none.
/// The configuration already loaded it without problems, so a read failure here means "none".
fn config_file_keys(env: &dyn Fn(&str) -> Option<String>) -> toml::Table {
    env("CHATGATE_CONFIG")
        .filter(|p| !p.trim().is_empty())
        .and_then(|path| std::fs::read_to_string(path.trim()).ok())
        .and_then(|text| text.parse::<toml::Table>().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key: &str| vars.get(key).cloned()
    }

    #[test]
    fn unset_limits_are_lifted() {
        let mut settings = Settings::defaults();
        let lines = lift_user_limits(&mut settings, &env_of(&[]));
        assert_eq!(settings.limits.user_rate_limit, DEV_USER_RATE_LIMIT);
        assert_eq!(settings.limits.daily_quota, DEV_DAILY_QUOTA);
        assert!(lines.iter().all(|l| l.contains("lifted")), "{lines:?}");
    }

    #[test]
    fn limits_set_in_the_environment_are_kept() {
        let mut settings = Settings::defaults();
        settings.limits.user_rate_limit = 30;
        let env = env_of(&[("CHATGATE_USER_RATE_LIMIT", "30")]);
        let lines = lift_user_limits(&mut settings, &env);
        assert_eq!(settings.limits.user_rate_limit, 30);
        assert_eq!(settings.limits.daily_quota, DEV_DAILY_QUOTA);
        assert!(lines[0].contains("(configured)"), "{lines:?}");
    }

    #[test]
    fn limits_set_in_the_config_file_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chatgate.toml");
        std::fs::write(&path, "daily_quota = 7\n").expect("write");
        let mut settings = Settings::defaults();
        settings.limits.daily_quota = 7;
        let env = env_of(&[("CHATGATE_CONFIG", path.to_str().expect("utf-8 path"))]);
        lift_user_limits(&mut settings, &env);
        assert_eq!(settings.limits.daily_quota, 7);
        assert_eq!(settings.limits.user_rate_limit, DEV_USER_RATE_LIMIT);
    }

    #[test]
    fn secret_file_is_private_refuses_an_existing_path_and_goes_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = DevSecretFile::create(dir.path(), "s3cret").expect("create");
        let path = file.path().to_path_buf();
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "s3cret");
        assert!(DevSecretFile::create(dir.path(), "other").is_err());
        drop(file);
        assert!(!path.exists());
    }
}
