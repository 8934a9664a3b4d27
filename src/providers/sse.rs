//! An incremental Server-Sent Events parser (the WHATWG `text/event-stream` format), pure and
//! I/O free. Network reads split the stream anywhere — inside a line, a `\r\n` pair or a UTF-8
//! character — so bytes are buffered until a whole line is known; a line is only decoded once
//! complete, which is safe because `\r` and `\n` never occur inside a multi-byte character.
//!
//! Only `data` matters to chat upstreams: `event`, `id` and `retry` are recognised and ignored,
//! comments (lines starting with `:`) are skipped, and an event is dispatched at a blank line.

/// What a single event (its pending line plus collected data) may grow to by default.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event or line is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the line being read, without its terminator.
    line: Vec<u8>,
    /// `data` values of the event being read, joined by `\n`.
    data: String,
    has_data: bool,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    at_stream_start: bool,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            after_cr: false,
            at_stream_start: true,
            max_event_bytes,
        }
    }

    /// Feeds the next bytes of the stream; returns the data of every event they complete, in
    /// order. After an error the parser must not be used again.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<Vec<String>, SseError> {
        let mut events = Vec::new();
        if chunk.is_empty() {
            return Ok(events);
        }
        if self.after_cr && chunk[0] == b'\n' {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => {
                    self.push_bytes(&chunk[..end])?;
                    let terminator = chunk[end];
                    chunk = &chunk[end + 1..];
                    if terminator == b'\r' {
                        match chunk.first() {
                            Some(b'\n') => chunk = &chunk[1..],
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                    self.end_line(&mut events)?;
                }
                None => {
                    self.push_bytes(chunk)?;
                    break;
                }
            }
        }
        Ok(events)
    }

    /// Whether bytes of an unfinished event are buffered (the stream stopped mid-event).
    pub fn is_mid_event(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + self.data.len() + bytes.len() > self.max_event_bytes {
            return Err(SseError::TooLarge {
                limit: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, events: &mut Vec<String>) -> Result<(), SseError> {
        let raw = std::mem::take(&mut self.line);
        let mut line: &str = &String::from_utf8_lossy(&raw);
        if std::mem::take(&mut self.at_stream_start) {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            if std::mem::take(&mut self.has_data) {
                events.push(std::mem::take(&mut self.data));
            }
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            if self.data.len() + value.len() + 1 > self.max_event_bytes {
                return Err(SseError::TooLarge {
                    limit: self.max_event_bytes,
                });
            }
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(bytes: &[u8]) -> Vec<String> {
        SseParser::default().feed(bytes).expect("valid stream")
    }

    fn parse_split(bytes: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            events.extend(parser.feed(&bytes[start..cut]).expect("valid stream"));
            start = cut;
        }
        events.extend(parser.feed(&bytes[start..]).expect("valid stream"));
        events
    }

    #[test]
    fn data_lines_are_dispatched_at_a_blank_line() {
        let events = parse_all(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(events, ["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let events = parse_all(b"data: one\ndata:two\ndata:  three\n\n");
        assert_eq!(events, ["one\ntwo\n three"]);
    }

    #[test]
    fn comments_and_other_fields_are_ignored() {
        let stream = b": keep-alive\nevent: message\nid: 7\nretry: 100\ndata: x\nunknown: y\n\n";
        assert_eq!(parse_all(stream), ["x"]);
        // A comment alone dispatches nothing.
        assert!(parse_all(b": ping\n\n").is_empty());
    }

    #[test]
    fn every_line_ending_is_understood() {
        assert_eq!(
            parse_all(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn a_crlf_split_between_reads_is_one_line_end() {
        let events = parse_split(b"data: a\r\n\r\ndata: b\r\n\r\n", &[8, 10]);
        assert_eq!(events, ["a", "b"]);
    }

    #[test]
    fn a_character_split_between_reads_is_decoded_whole() {
        let stream = "data: héllo 🦀\n\n".as_bytes();
        let crab = stream.len() - 4;
        assert_eq!(parse_split(stream, &[7, crab]), ["héllo 🦀"]);
    }

    #[test]
    fn field_without_colon_and_empty_data_count() {
        assert_eq!(parse_all(b"data\n\ndata:\n\n"), ["", ""]);
    }

    #[test]
    fn unfinished_event_is_not_dispatched() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b"data: partial\n").expect("ok").is_empty());
        assert!(parser.is_mid_event());
        let mut parser = SseParser::default();
        assert_eq!(parser.feed(b"data: x\n\n").expect("ok"), ["x"]);
        assert!(!parser.is_mid_event());
    }

    #[test]
    fn leading_byte_order_mark_is_skipped() {
        assert_eq!(parse_all("\u{feff}data: x\n\n".as_bytes()), ["x"]);
    }

    #[test]
    fn oversized_line_or_event_is_an_error() {
        let mut parser = SseParser::new(16);
        assert_eq!(
            parser.feed(b"data: 0123456789abcdef"),
            Err(SseError::TooLarge { limit: 16 })
        );
        let mut parser = SseParser::new(16);
        parser.feed(b"data: 0123456\n").expect("fits");
        assert!(parser.feed(b"data: 0123456\n").is_err());
    }

    /// A line of a generated stream and its line ending.
    #[derive(Clone, Debug)]
    enum Line {
        Data(String),
        Comment(String),
        Other(&'static str, String),
        Blank,
    }

    fn line() -> impl Strategy<Value = Line> {
        // No CR/LF inside values: those end lines by definition.
        let text = "[^\r\n]{0,12}";
        prop_oneof![
            4 => text.prop_map(Line::Data),
            1 => text.prop_map(Line::Comment),
            1 => (prop::sample::select(vec!["event", "id", "retry"]), text)
                .prop_map(|(field, value)| Line::Other(field, value)),
            3 => Just(Line::Blank),
        ]
    }

    fn render(lines: &[(Line, &str)]) -> Vec<u8> {
        let mut out = String::new();
        for (line, ending) in lines {
            match line {
                Line::Data(value) => out.push_str(&format!("data: {value}")),
                Line::Comment(text) => out.push_str(&format!(":{text}")),
                Line::Other(field, value) => out.push_str(&format!("{field}: {value}")),
                Line::Blank => {}
            }
            out.push_str(ending);
        }
        out.into_bytes()
    }

    /// The events a stream of these lines must produce, computed without the parser.
    fn expected(lines: &[(Line, &str)]) -> Vec<String> {
        let (mut events, mut data) = (Vec::new(), None::<String>);
        for (line, _) in lines {
            match line {
                Line::Data(value) => {
                    // `render` adds one space after the colon, which the parser strips.
                    let value = value.clone();
                    data = Some(match data {
                        Some(previous) => format!("{previous}\n{value}"),
                        None => value,
                    });
                }
                Line::Blank => events.extend(data.take()),
                _ => {}
            }
        }
        events
    }

    /// `\r` then a blank line ending in `\n` is one CRLF, not two line ends: the format itself
    /// cannot tell them apart, so the generator does not write it.
    fn unambiguous(mut lines: Vec<(Line, &'static str)>) -> Vec<(Line, &'static str)> {
        for i in 1..lines.len() {
            if lines[i - 1].1 == "\r" && matches!(lines[i].0, Line::Blank) {
                lines[i].1 = "\r";
            }
        }
        lines
    }

    proptest! {
        #[test]
        fn any_split_of_a_stream_gives_the_same_events(
            lines in prop::collection::vec(
                (line(), prop::sample::select(vec!["\n", "\r\n", "\r"])),
                0..24,
            ).prop_map(unambiguous),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let bytes = render(&lines);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let whole = parse_all(&bytes);
            prop_assert_eq!(&whole, &expected(&lines));
            prop_assert_eq!(parse_split(&bytes, &cuts), whole);
        }
    }
}
