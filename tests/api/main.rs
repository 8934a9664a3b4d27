mod auth;
mod chat_ws;
mod cli;
mod health;
mod helpers;
mod quota_primitive;
mod ws_client;
