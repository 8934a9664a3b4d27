//! The WebSockets: the chat socket, the admins' live feed socket, their wire frames and
//! the transport pieces they share. Only this module uses `actix-web-actors` (deprecated
//! upstream in favour of `actix-ws`), so moving off it touches nothing outside `ws/`.

pub mod admin_feed;
pub mod chat;
pub mod chat_frames;
pub mod origin;
pub mod protocol;
pub mod transport;
