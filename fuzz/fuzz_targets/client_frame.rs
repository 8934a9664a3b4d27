//! `ClientFrame::parse` on arbitrary text: it must never panic, every frame it accepts must
//! satisfy the contract's rules, and an accepted frame re-encoded as JSON must parse back to
//! the same frame.

#![no_main]

use chatgate::domain::ChatId;
use chatgate::ws::protocol::ClientFrame;
use libfuzzer_sys::fuzz_target;

fn check_id(id: &ChatId) {
    let chars = id.as_str().chars().count();
    assert!(
        (1..=ChatId::MAX_CHARS).contains(&chars),
        "id of {chars} chars"
    );
}

fuzz_target!(|data: &[u8]| {
    // The connection only hands the parser valid UTF-8 (text frames are checked first).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::parse(text) {
        Ok(ClientFrame::Chat { id, model, content }) => {
            check_id(&id);
            assert!(!model.is_empty(), "empty model accepted");
            assert!(!content.trim().is_empty(), "blank content accepted");
            let again = serde_json::json!({
                "type": "chat", "id": id.as_str(), "model": model, "content": content,
            })
            .to_string();
            assert_eq!(
                ClientFrame::parse(&again),
                Ok(ClientFrame::Chat { id, model, content }),
                "re-encoded frame parses differently"
            );
        }
        Ok(ClientFrame::Cancel { id }) => {
            check_id(&id);
            let again = serde_json::json!({"type": "cancel", "id": id.as_str()}).to_string();
            assert_eq!(ClientFrame::parse(&again), Ok(ClientFrame::Cancel { id }));
        }
        Ok(ClientFrame::Ping) => {}
        Err(err) => {
            assert!(!err.message.is_empty(), "error without a message");
            if let Some(id) = &err.id {
                check_id(id);
            }
        }
    }
});
