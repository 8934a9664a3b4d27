//! What a chat client sends: WebSocket messages, fragments reassembled, and protocol errors.

use actix::clock::Instant;
use actix::prelude::*;
use actix_web::web::BytesMut;
use actix_web_actors::ws::{self, CloseCode, ProtocolError};

use super::{Fragments, WsConnection, BINARY_REFUSED};
use crate::ws::protocol::ServerFrame;

impl StreamHandler<Result<ws::Message, ProtocolError>> for WsConnection {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        let msg = match msg {
            Ok(msg) => msg,
            Err(ProtocolError::Overflow) => {
                let reason = format!("frame larger than {} bytes", self.settings.max_frame_bytes);
                return self.close(ctx, CloseCode::Size, &reason);
            }
            Err(err) => {
                log::debug!(
                    "event=ws_protocol_error conn_id={} error={err}",
                    self.conn_id
                );
                return self.close(ctx, CloseCode::Protocol, "websocket protocol error");
            }
        };
        match msg {
            ws::Message::Text(text) => self.on_text(&text, ctx),
            ws::Message::Binary(_) => {
                self.send(ctx, &ServerFrame::bad_request(None, BINARY_REFUSED))
            }
            ws::Message::Continuation(item) => self.on_fragment(item, ctx),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl WsConnection {
    /// Reassembles a fragmented message. Text is parsed once complete; binary is discarded and
    /// answered once, like an unfragmented binary frame.
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (data, last) = match item {
            actix_http::ws::Item::FirstText(data) => {
                self.fragments = Some(Fragments::Text(BytesMut::new()));
                (data, false)
            }
            actix_http::ws::Item::FirstBinary(_) => {
                self.fragments = Some(Fragments::Binary);
                return;
            }
            actix_http::ws::Item::Continue(data) => (data, false),
            actix_http::ws::Item::Last(data) => (data, true),
        };
        let max = self.settings.max_frame_bytes;
        match self.fragments.as_mut() {
            None => self.close(
                ctx,
                CloseCode::Protocol,
                "continuation without a first fragment",
            ),
            Some(Fragments::Binary) => {
                if last {
                    self.fragments = None;
                    self.send(ctx, &ServerFrame::bad_request(None, BINARY_REFUSED));
                }
            }
            Some(Fragments::Text(buffer)) => {
                if buffer.len() + data.len() > max {
                    self.fragments = None;
                    return self.close(
                        ctx,
                        CloseCode::Size,
                        &format!("message larger than {max} bytes"),
                    );
                }
                buffer.extend_from_slice(&data);
                if last {
                    if let Some(Fragments::Text(complete)) = self.fragments.take() {
                        match std::str::from_utf8(&complete) {
                            Ok(text) => self.on_text(text, ctx),
                            Err(_) => self.close(
                                ctx,
                                CloseCode::Invalid,
                                "text message is not valid UTF-8",
                            ),
                        }
                    }
                }
            }
        }
    }
}
