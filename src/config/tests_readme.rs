//! README.md's "## Configuration" table against the declarations, so the docs cannot drift.

use std::collections::BTreeMap;

use super::{Settings, EXTERNAL_VARIABLES};

/// Variable -> default, as the table writes them; a row may document several variables
/// (`A` / `B` with defaults `x` / `y`).
fn readme_rows() -> BTreeMap<String, String> {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("\n## Configuration\n")
        .expect("README has a ## Configuration section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3)];
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let variables = backticked(cells[0]);
        let defaults: Vec<String> = cells[1]
            .split(" / ")
            .map(|part| {
                backticked(part)
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| part.trim().to_string())
            })
            .collect();
        assert_eq!(variables.len(), defaults.len(), "row: {line}");
        for (variable, default) in variables.into_iter().zip(defaults) {
            assert!(
                rows.insert(variable, default).is_none(),
                "row twice: {line}"
            );
        }
    }
    rows
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_configuration_table_matches_the_declarations() {
    let rows = readme_rows();
    let declared = Settings::declarations();
    for decl in &declared {
        let row = rows.get(decl.env);
        assert!(row.is_some(), "README has no row for {}", decl.env);
        assert_eq!(row, Some(&decl.default), "README default of {}", decl.env);
    }
    for (variable, default) in &rows {
        let known = declared.iter().any(|decl| decl.env == variable)
            || EXTERNAL_VARIABLES.contains(&(variable.as_str(), default.as_str()));
        assert!(
            known,
            "README documents {variable} = {default}, which is not declared"
        );
    }
}

#[test]
fn readme_parser_reads_paired_rows() {
    let rows = readme_rows();
    assert_eq!(
        rows.get("CHATGATE_USER_RATE_WINDOW_SECS")
            .map(String::as_str),
        Some("60")
    );
    assert_eq!(rows.get("RUST_LOG").map(String::as_str), Some("info"));
}
