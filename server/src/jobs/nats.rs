//! The cluster backend: NATS `JetStream` carries due jobs to the workers of
//! every node (`async-nats`).
//!
//! * One stream `<prefix>_jobs` (work-queue retention: a message is gone
//!   once acked; file storage: it survives a nats-server restart) over the
//!   subjects `<prefix>.jobs.{high,normal,low}`, and per priority one
//!   durable pull consumer `<prefix>_jobs_<priority>` filtered to its
//!   subject, with `ack_wait` = the job lease. Workers ask the consumers in
//!   priority order (`fetch`: answers at once, empty or not), so under a
//!   backlog high runs before normal before low.
//! * A message is a pointer `{"id", "attempts"}` to a due row of the
//!   `jobs` table with `Nats-Msg-Id: <id>:<attempts>`, so the dispatchers
//!   of several nodes publishing the same due job within the stream's
//!   duplicate window store it once. A pointer whose job moved on (claimed
//!   elsewhere, cancelled, at another attempt) is acked and dropped; one
//!   whose job is not due yet (clocks apart) is refused (NAK) until it is.
//! * Idle workers wait on a core subscription to the same subjects (a
//!   `JetStream` publish is also a plain NATS message), or at most [`IDLE`].
//! * `max_deliver` is unlimited: attempts are counted in the database,
//!   where retries and dead letters are decided; a message is only a hint.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::Priority;

/// How long an idle worker waits for a wake-up before asking again anyway.
pub const IDLE: Duration = Duration::from_secs(1);
/// How long a publish waits for `JetStream`'s ack, and a fetch or an ack
/// for an answer. A request sent just before nats-server went away is
/// never answered: without a bound, a worker would wait on it for ever
/// (holding its run slot) and the dispatcher would stop.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The stream's duplicate window, and how long the dispatcher trusts that
/// a published pointer is still in the stream before publishing it again.
pub const REDISPATCH: Duration = Duration::from_mins(10);

/// A problem with NATS (unreachable, refused a stream or consumer, timed out).
#[derive(Debug, thiserror::Error)]
#[error("NATS JetStream at {url}: {what}: {detail}")]
pub struct NatsError {
    url: String,
    what: &'static str,
    detail: String,
}

/// The pointer a message carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pointer {
    pub id: String,
    pub attempts: i64,
}

/// The connected queue.
#[derive(Debug)]
pub struct Queue {
    client: async_nats::Client,
    js: jetstream::Context,
    /// High, normal, low.
    consumers: [PullConsumer; 3],
    prefix: String,
    url: String,
}

fn subject(prefix: &str, priority: Priority) -> String {
    format!("{prefix}.jobs.{}", priority.as_str())
}

impl Queue {
    /// Connect and make sure the stream and consumers exist (idempotent: every
    /// node does it at start).
    pub async fn connect(url: &str, prefix: &str, lease: Duration) -> Result<Queue, NatsError> {
        let shown = avap_hostfns::redact::url(url);
        let fail = |what: &'static str| {
            let url = shown.clone();
            move |e: &dyn std::fmt::Display| NatsError {
                url,
                what,
                detail: e.to_string(),
            }
        };
        let client = async_nats::ConnectOptions::new()
            .name("avap")
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(PUBLISH_TIMEOUT))
            // Reconnect for ever: a node outlives a restart of nats-server.
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("jobs: connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("jobs: disconnected from NATS; reconnecting (jobs are still accepted)");
                    }
                    other => tracing::debug!("jobs: NATS: {other}"),
                }
            })
            .connect(url)
            .await
            .map_err(|e| fail("cannot connect")(&e))?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("{prefix}_jobs"),
                subjects: vec![format!("{prefix}.jobs.*")],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                duplicate_window: REDISPATCH,
                ..Default::default()
            })
            .await
            .map_err(|e| fail("cannot create the jobs stream")(&e))?;
        let mut consumers = Vec::with_capacity(3);
        for priority in Priority::ALL {
            let name = format!("{prefix}_jobs_{}", priority.as_str());
            let consumer = stream
                .get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: subject(prefix, priority),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: lease,
                        max_deliver: -1,
                        // Each node holds at most its worker count; no cap needed here.
                        max_ack_pending: -1,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| fail("cannot create a jobs consumer")(&e))?;
            consumers.push(consumer);
        }
        let consumers: [PullConsumer; 3] = consumers
            .try_into()
            .map_err(|_| fail("cannot create the jobs consumers")(&"not three"))?;
        Ok(Queue {
            client,
            js,
            consumers,
            prefix: prefix.to_owned(),
            url: shown,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Hand due job `(id, attempts)` to the stream; `Ok` once `JetStream`
    /// stored it.
    pub async fn publish(&self, id: &str, attempts: i64, priority: Priority) -> Result<(), NatsError> {
        let payload = serde_json::to_vec(&Pointer {
            id: id.to_owned(),
            attempts,
        })
        .unwrap_or_default();
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("{id}:{attempts}"));
        let error = |what: &'static str, detail: String| NatsError {
            url: self.url.clone(),
            what,
            detail,
        };
        let published = async {
            let ack = self
                .js
                .send_publish(subject(&self.prefix, priority), publish)
                .await
                .map_err(|e| error("cannot publish a job", e.to_string()))?;
            ack.await
                .map_err(|e| error("a published job was not stored", e.to_string()))
        };
        tokio::time::timeout(PUBLISH_TIMEOUT, published)
            .await
            .map_err(|_| error("no ack for a published job", "timed out".to_owned()))??;
        Ok(())
    }

    /// The next message, most urgent priority first; `None` when every
    /// consumer is empty.
    pub async fn next(&self) -> Result<Option<(Pointer, jetstream::Message)>, NatsError> {
        let error = |detail: String| NatsError {
            url: self.url.clone(),
            what: "cannot fetch jobs",
            detail,
        };
        for consumer in &self.consumers {
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, async {
                let mut batch = consumer
                    .fetch()
                    .max_messages(1)
                    // No `expires`: with it, nats-server 2.9 holds a
                    // no-wait request open until it expires when the
                    // consumer is empty, and the next priority would wait.
                    .messages()
                    .await
                    .map_err(|e| error(e.to_string()))?;
                Ok::<_, NatsError>(batch.next().await)
            })
            .await
            .map_err(|_| error("no answer (timed out)".to_owned()))??;
            if let Some(message) = fetched {
                let message = message.map_err(|e| error(e.to_string()))?;
                match serde_json::from_slice::<Pointer>(&message.payload) {
                    Ok(pointer) => return Ok(Some((pointer, message))),
                    Err(e) => {
                        // Not ours (someone published by hand): drop it.
                        tracing::warn!(subject = %message.subject, "dropping a message on the jobs stream that is not a job pointer: {e}");
                        let _ = message.ack().await;
                    }
                }
            }
        }
        Ok(None)
    }

    /// A subscription that sees every published job (wake-ups for idle workers).
    pub async fn wake_ups(&self) -> Result<async_nats::Subscriber, NatsError> {
        self.client
            .subscribe(format!("{}.jobs.*", self.prefix))
            .await
            .map_err(|e| NatsError {
                url: self.url.clone(),
                what: "cannot subscribe to job wake-ups",
                detail: e.to_string(),
            })
    }
}

/// Tell `JetStream` how a delivered pointer was handled. A failure only
/// means the message comes back after `ack_wait` (and is then dropped as
/// stale), so it is logged, not returned.
pub async fn settle(message: &jetstream::Message, kind: AckKind) {
    match tokio::time::timeout(PUBLISH_TIMEOUT, message.ack_with(kind)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("cannot settle a jobs message: {e}"),
        Err(_) => tracing::debug!("cannot settle a jobs message: timed out"),
    }
}
