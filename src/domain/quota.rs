/// What admission decided about a chat's daily quota unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaTake {
    /// A unit is the chat's; it is given back if the chat fails before any delta.
    Taken,
    /// Every unit of the day is used or held by a chat.
    Exceeded {
        limit: i64,
    },
    Disabled,
}
