//! The TOML layer. Each top-level key is applied on its own, so every bad key is reported,
//! not only the first one serde stops at.

use std::path::Path;

use super::models::FileModel;
use super::{ConfigProblem, Settings};

impl Settings {
    pub(super) fn apply_file(&mut self, path: &Path, problems: &mut Vec<ConfigProblem>) {
        let shown = path.display();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                let message = format!(
                    "cannot read `{shown}` ({err}); point CHATGATE_CONFIG at a readable TOML \
                     file or unset it"
                );
                return problems.push(ConfigProblem::new("CHATGATE_CONFIG", message));
            }
        };
        let table: toml::Table = match toml::from_str(&text) {
            Ok(table) => table,
            Err(err) => {
                let before = err.span().and_then(|span| text.get(..span.start));
                let at = before
                    .map(|before| format!(" at line {}", before.matches('\n').count() + 1))
                    .unwrap_or_default();
                let message = format!(
                    "`{shown}` is not valid TOML{at} ({}); fix the syntax",
                    err.message().trim()
                );
                return problems.push(ConfigProblem::new("CHATGATE_CONFIG", message));
            }
        };
        // The table is sorted by key, so problems come in a stable order.
        for (key, value) in &table {
            // An empty string means unset, as in the environment.
            if value.as_str() == Some("") {
                continue;
            }
            match key.as_str() {
                "models" => self.apply_models(value, &shown.to_string(), problems),
                "rust_log" => match value.as_str() {
                    Some(filter) if !filter.trim().is_empty() => {
                        self.log_filter = Some(filter.to_string())
                    }
                    Some(_) => {}
                    None => problems.push(ConfigProblem::new(
                        "rust_log",
                        format!(
                            "`rust_log` in `{shown}`: expected a string, found {}; correct the \
                             value or remove it",
                            value.type_str()
                        ),
                    )),
                },
                _ => match self.apply_toml_key(key, value) {
                    Some(Ok(())) => {}
                    Some(Err((env, message))) => problems.push(ConfigProblem::new(
                        env,
                        format!("`{key}` in `{shown}`: {message}; correct the value or remove it"),
                    )),
                    None => problems.push(ConfigProblem::new(
                        "CHATGATE_CONFIG",
                        format!(
                            "in `{shown}`: unknown key `{key}`; remove the key or correct its \
                             spelling"
                        ),
                    )),
                },
            }
        }
    }

    /// All entries or none: a half-read list would serve a different set of models.
    fn apply_models(
        &mut self,
        value: &toml::Value,
        shown: &str,
        problems: &mut Vec<ConfigProblem>,
    ) {
        let Some(entries) = value.as_array() else {
            return problems.push(ConfigProblem::new(
                "models",
                format!("in `{shown}`: expected [[models]] tables; fix the file"),
            ));
        };
        let mut parsed = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match entry.clone().try_into::<FileModel>() {
                Ok(model) => parsed.push(model),
                Err(err) => problems.push(ConfigProblem::new(
                    format!("models[{i}]"),
                    format!("in `{shown}`: {}; fix this [[models]] entry", err.message()),
                )),
            }
        }
        if parsed.len() == entries.len() {
            self.models = parsed
                .into_iter()
                .enumerate()
                .filter_map(|(i, model)| model.into_settings(i, problems))
                .collect();
        }
    }
}
