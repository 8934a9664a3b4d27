//! A reply's event stream polled by an actor's context and taken back from it whole.
//!
//! An actor follows a stream by handing it to its context, which then owns it: there is no
//! asking for it back. A reply moves between a socket and the keeper (socket drops, resume),
//! and what moves must be exactly the stream the context was polling, with whatever it has not
//! yet delivered still inside, or frames would be lost or repeated. So the context polls a
//! `HeldStream` that reads the stream out of a slot, and the actor keeps the `Held` end of the
//! same slot: taking the stream out of it, between two events, stops the context's polling
//! right there. Both ends live in the one actor (one thread): nothing is shared beyond it.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};

use super::frames::{ReplyEvent, ReplyStream};

type Slot = Rc<RefCell<Option<ReplyStream>>>;

/// The actor's end: takes the stream back.
pub struct Held(Slot);

/// The context's end: yields the stream's events until it ends or is taken back.
pub struct HeldStream(Slot);

/// Splits `stream` into the end the actor keeps and the end its context polls.
pub fn hold(stream: ReplyStream) -> (Held, HeldStream) {
    let slot = Rc::new(RefCell::new(Some(stream)));
    (Held(slot.clone()), HeldStream(slot))
}

impl Held {
    /// The stream, with every event the context has not yet handed to the actor; the context's
    /// end yields nothing more. `None` if it was taken before.
    pub fn take(&self) -> Option<ReplyStream> {
        self.0.borrow_mut().take()
    }
}

impl Stream for HeldStream {
    type Item = ReplyEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ReplyEvent>> {
        // The actor only takes the stream from inside its own handlers, never while the
        // context is polling here, so this borrow cannot collide.
        match self.0.borrow_mut().as_mut() {
            Some(stream) => stream.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn taking_back_keeps_what_was_not_yet_polled() {
        let events = futures_util::stream::iter(vec![
            ReplyEvent::Delta("a".into()),
            ReplyEvent::Delta("b".into()),
            ReplyEvent::Delta("c".into()),
        ]);
        let (held, mut polled) = hold(Box::pin(events));
        assert_eq!(polled.next().await, Some(ReplyEvent::Delta("a".into())));
        let mut rest = held.take().expect("stream");
        assert_eq!(polled.next().await, None);
        assert!(held.take().is_none());
        assert_eq!(rest.next().await, Some(ReplyEvent::Delta("b".into())));
        assert_eq!(rest.next().await, Some(ReplyEvent::Delta("c".into())));
    }
}
