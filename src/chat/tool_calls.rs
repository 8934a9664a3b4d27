//! Assembles the tool calls of a streamed reply from its `delta.tool_calls` fragments: the
//! first fragment of a call brings its id, type and name, later ones more of its arguments.

use serde::Deserialize;

use crate::domain::message::{RawJson, ToolCall};

#[derive(Deserialize)]
struct Fragment {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    function: Option<FunctionFragment>,
}

#[derive(Deserialize)]
struct FunctionFragment {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Default)]
pub struct ToolCallAssembler {
    calls: Vec<ToolCall>,
    /// Slot of each call by the upstream's `index`.
    indexes: Vec<usize>,
}

impl ToolCallAssembler {
    /// Adds one chunk's fragments. A chunk that is not an array of fragments is refused with
    /// the reason; the caller decides what that means for the reply.
    pub fn feed(&mut self, fragments: &RawJson) -> Result<(), String> {
        let fragments: Vec<Fragment> =
            serde_json::from_str(fragments.get()).map_err(|err| err.to_string())?;
        for fragment in fragments {
            let slot = self.slot(&fragment);
            let call = &mut self.calls[slot];
            if let Some(id) = fragment.id.filter(|id| !id.is_empty()) {
                call.id = id;
            }
            if let Some(kind) = fragment.kind.filter(|kind| !kind.is_empty()) {
                call.kind = kind;
            }
            if let Some(function) = fragment.function {
                if let Some(name) = function.name {
                    call.function.name.push_str(&name);
                }
                if let Some(arguments) = function.arguments {
                    call.function.arguments.push_str(&arguments);
                }
            }
        }
        Ok(())
    }

    fn slot(&mut self, fragment: &Fragment) -> usize {
        let known = match fragment.index {
            Some(index) => self.indexes.iter().position(|i| *i == index),
            // Servers that send whole calls without an index: a new id is a new call.
            None => match (&fragment.id, self.calls.last()) {
                (Some(id), Some(last)) if !id.is_empty() && *id != last.id => None,
                (_, Some(_)) => Some(self.calls.len() - 1),
                (_, None) => None,
            },
        };
        known.unwrap_or_else(|| {
            self.indexes
                .push(fragment.index.unwrap_or(self.calls.len()));
            self.calls.push(ToolCall {
                kind: "function".into(),
                ..ToolCall::default()
            });
            self.calls.len() - 1
        })
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn finish(self) -> Vec<ToolCall> {
        self.calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn raw(text: &str) -> RawJson {
        RawJson(RawValue::from_string(text.into()).expect("json"))
    }

    #[test]
    fn fragments_become_whole_calls_by_index() {
        let mut calls = ToolCallAssembler::default();
        for chunk in [
            r#"[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]"#,
            r#"[{"index":0,"function":{"arguments":"{\"city\":"}}]"#,
            r#"[{"index":1,"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}}]"#,
            r#"[{"index":0,"function":{"arguments":"\"Paris\"}"}}]"#,
        ] {
            calls.feed(&raw(chunk)).expect("valid");
        }
        let calls = calls.finish();
        assert_eq!(
            serde_json::to_value(&calls).expect("json"),
            serde_json::json!([
                {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}},
            ])
        );
    }

    #[test]
    fn calls_without_index_are_told_apart_by_id() {
        let mut calls = ToolCallAssembler::default();
        calls
            .feed(&raw(r#"[{"id":"a","function":{"name":"f","arguments":"{}"}},{"id":"b","function":{"name":"g","arguments":"{}"}}]"#))
            .expect("valid");
        let calls = calls.finish();
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].id.as_str(), calls[1].id.as_str()), ("a", "b"));
    }

    #[test]
    fn a_chunk_that_is_not_fragments_is_refused() {
        let mut calls = ToolCallAssembler::default();
        assert!(calls.feed(&raw(r#"{"index":0}"#)).is_err());
        assert!(calls.is_empty());
    }
}
