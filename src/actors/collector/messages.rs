//! What the collector answers to.

use actix::prelude::*;

use crate::error::AppError;

/// Starts a run unless one is running on any instance. Answers with the run's id as soon as
/// the lease is taken; the work goes on in the background.
#[derive(Message)]
#[rtype(result = "Result<String, AppError>")]
pub struct StartCollection;
