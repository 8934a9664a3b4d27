//! The cluster bus: the one actor that carries commands between instances (Redis pub/sub).
//! Every instance listens on a broadcast channel and on its own channel. A command for one
//! instance goes to that instance's channel and its answer comes back on the sender's
//! channel, matched by request number; a caller waits at most [`ANSWER_TIMEOUT`]. Commands
//! that arrive are handed to the actor that owns the concern (sessions, connections,
//! origins), registered at startup with [`RouteCommands`].
//!
//! Without cluster mode there is no bus: callers hold `Option<Addr<ClusterBus>>`.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use crate::cluster::protocol::{Answer, Body, Command, CommandKind, Envelope, BUS_VERSION};
use crate::cluster::{RedisLink, RedisUnavailable};

/// How long a caller waits for the holding instance: the contract's 1 s for admin actions.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(900);
/// How long the listener waits before subscribing again after its connection dropped.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// A command that arrived for this instance, handed to the actor that owns its concern.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Answer")]
pub struct RemoteCommand(pub Command);

/// Who handles one kind of arriving command. Set at startup, after the owning actor exists
/// (it holds the bus's address, so the bus cannot be given its address when it is made).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct RouteCommands {
    pub kind: CommandKind,
    pub to: Recipient<RemoteCommand>,
}

/// Sends `command` to `instance` and waits for its answer (at most [`ANSWER_TIMEOUT`]).
#[derive(Message)]
#[rtype(result = "Result<Answer, RedisUnavailable>")]
pub struct AskInstance {
    pub instance: String,
    pub command: Command,
}

/// Sends `command` to every other instance without waiting: for changes every instance
/// applies on its own (a disabled user's sockets, new origins). The caller applies it locally
/// itself.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TellOthers(pub Command);

/// The pub/sub connection dropped or Redis came back: subscribe again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resubscribe;

#[derive(Message)]
#[rtype(result = "()")]
struct Arrived(Vec<u8>);

#[derive(Message)]
#[rtype(result = "()")]
struct ListenerEnded {
    generation: u64,
}

pub struct ClusterBus {
    link: RedisLink,
    handlers: HashMap<CommandKind, Recipient<RemoteCommand>>,
    next_request: u64,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    listener: Option<SpawnHandle>,
    generation: u64,
}

impl ClusterBus {
    pub fn new(link: RedisLink) -> ClusterBus {
        ClusterBus {
            link,
            handlers: HashMap::new(),
            next_request: 1,
            waiting: HashMap::new(),
            listener: None,
            generation: 0,
        }
    }

    fn listen(&mut self, ctx: &mut Context<Self>) {
        if let Some(old) = self.listener.take() {
            ctx.cancel_future(old);
        }
        self.generation += 1;
        let generation = self.generation;
        let client = self.link.client().clone();
        let channels = [
            self.link.keys().broadcast_channel(),
            self.link.keys().instance_channel(self.link.instance()),
        ];
        let me = ctx.address();
        let listen = async move {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    let mut subscribed = true;
                    for channel in &channels {
                        if let Err(err) = pubsub.subscribe(channel).await {
                            log::debug!("event=cluster_bus_subscribe_failed error={err}");
                            subscribed = false;
                            break;
                        }
                    }
                    if subscribed {
                        log::debug!("event=cluster_bus_listening generation={generation}");
                        let mut messages = pubsub.into_on_message();
                        while let Some(message) = messages.next().await {
                            me.do_send(Arrived(message.get_payload_bytes().to_vec()));
                        }
                    }
                }
                Err(err) => log::debug!("event=cluster_bus_connect_failed error={err}"),
            }
            actix::clock::sleep(RESUBSCRIBE_AFTER).await;
            me.do_send(ListenerEnded { generation });
        };
        self.listener = Some(ctx.spawn(listen.into_actor(self)));
    }

    fn publish(
        &self,
        channel: String,
        envelope: Envelope,
    ) -> impl std::future::Future<Output = Result<i64, RedisUnavailable>> {
        let link = self.link.clone();
        let payload = envelope.encode();
        async move {
            link.run(|mut conn| async move {
                // How many subscribers got it.
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
        }
    }

    fn envelope(&self, body: Body) -> Envelope {
        Envelope {
            v: BUS_VERSION,
            from: self.link.instance().to_string(),
            body,
        }
    }

    fn handler_for(&self, command: &Command) -> Option<Recipient<RemoteCommand>> {
        self.handlers.get(&command.kind()).cloned()
    }
}

impl Actor for ClusterBus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        self.listen(ctx);
        log::info!("event=actor_started actor=cluster_bus");
    }
}

impl Handler<RouteCommands> for ClusterBus {
    type Result = ();

    fn handle(&mut self, msg: RouteCommands, _: &mut Context<Self>) {
        self.handlers.insert(msg.kind, msg.to);
    }
}

impl Handler<Resubscribe> for ClusterBus {
    type Result = ();

    fn handle(&mut self, _: Resubscribe, ctx: &mut Context<Self>) {
        self.listen(ctx);
    }
}

impl Handler<ListenerEnded> for ClusterBus {
    type Result = ();

    fn handle(&mut self, msg: ListenerEnded, ctx: &mut Context<Self>) {
        // A listener replaced meanwhile (Resubscribe) ends too; only the current one restarts.
        if msg.generation == self.generation {
            self.listen(ctx);
        }
    }
}

impl Handler<Arrived> for ClusterBus {
    type Result = ();

    fn handle(&mut self, msg: Arrived, ctx: &mut Context<Self>) {
        let Some(envelope) = Envelope::decode(&msg.0) else {
            return;
        };
        match envelope.body {
            Body::Answer { request, answer } => {
                if let Some(waiter) = self.waiting.remove(&request) {
                    let _ = waiter.send(answer);
                }
            }
            Body::Command { request, command } => {
                // Broadcasts reach their sender too; it applied the change itself.
                if envelope.from == **self.link.instance() {
                    return;
                }
                let Some(handler) = self.handler_for(&command) else {
                    log::debug!("event=cluster_bus_skipped reason=not_ready");
                    return;
                };
                log::debug!(
                    "event=cluster_command from={} command={command:?}",
                    envelope.from
                );
                let reply_to = self.link.keys().instance_channel(&envelope.from);
                ctx.spawn(
                    async move { handler.send(RemoteCommand(command)).await }
                        .into_actor(self)
                        .map(move |answer, act, ctx| {
                            if request == 0 {
                                return;
                            }
                            let answer = answer.unwrap_or(Answer::NotFound);
                            let envelope = act.envelope(Body::Answer { request, answer });
                            let publish = act.publish(reply_to, envelope);
                            ctx.spawn(
                                async move {
                                    if let Err(err) = publish.await {
                                        log::debug!("event=cluster_answer_failed error={err}");
                                    }
                                }
                                .into_actor(act),
                            );
                        }),
                );
            }
        }
    }
}

impl Handler<AskInstance> for ClusterBus {
    type Result = ResponseFuture<Result<Answer, RedisUnavailable>>;

    fn handle(&mut self, msg: AskInstance, ctx: &mut Context<Self>) -> Self::Result {
        let request = self.next_request;
        self.next_request += 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(request, tx);
        let envelope = self.envelope(Body::Command {
            request,
            command: msg.command,
        });
        let publish = self.publish(self.link.keys().instance_channel(&msg.instance), envelope);
        // An answer that never comes must not keep its entry.
        ctx.run_later(ANSWER_TIMEOUT * 2, move |act, _| {
            act.waiting.remove(&request);
        });
        Box::pin(async move {
            // Nobody listens on a dead instance's channel: no point waiting for its answer.
            if publish.await? == 0 {
                return Err(RedisUnavailable(format!(
                    "instance {} is not listening",
                    msg.instance
                )));
            }
            match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                _ => Err(RedisUnavailable(format!(
                    "instance {} did not answer within {ANSWER_TIMEOUT:?}",
                    msg.instance
                ))),
            }
        })
    }
}

impl Handler<TellOthers> for ClusterBus {
    type Result = ();

    fn handle(&mut self, msg: TellOthers, ctx: &mut Context<Self>) {
        let envelope = self.envelope(Body::Command {
            request: 0,
            command: msg.0,
        });
        let publish = self.publish(self.link.keys().broadcast_channel(), envelope);
        let link = self.link.clone();
        ctx.spawn(
            async move {
                if let Err(err) = publish.await {
                    // While Redis is down the outage's one warning says it all already.
                    if link.is_up() {
                        log::warn!("event=cluster_broadcast_failed error={err}");
                    } else {
                        log::debug!("event=cluster_broadcast_failed error={err}");
                    }
                }
            }
            .into_actor(self),
        );
    }
}
