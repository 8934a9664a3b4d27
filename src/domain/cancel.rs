//! Why a running reply is being cut short; sent from a transport (or a connection being
//! closed) to the pipeline running the reply.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The client asked (`cancel` frame): the reply ends with `done`, `cancelled: true`.
    Client,
    /// The server is shutting down: the reply ends with an `unavailable` error.
    Shutdown,
}
