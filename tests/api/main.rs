mod auth;
mod cli;
mod health;
mod helpers;
mod quota_primitive;
