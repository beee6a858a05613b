//! What a node runs in the background for jobs ([`start`]): its workers,
//! the lease sweeper, the pruner and, with NATS, the connection and the
//! dispatcher.
//!
//! A worker claims a job only when a run slot is free, and holds none while
//! it waits for work (health and requests see idle workers as idle); it
//! takes the slot to run the job, under the job's lease. While the job
//! waits for its slot and runs, the worker renews the lease every third of
//! it (and tells NATS the message is in progress); a renewal that finds
//! the job no longer its own (cancelled, or requeued after the lease ran
//! out) stops the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use avap_runtime::{Limits, RunReport};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::nats::{self, Queue};
use super::store::{Claim, Claimed, Finish};
use super::{JobState, Jobs, JobsBackend, POLL, now_ms};
use crate::AppState;
use crate::audit::RunTarget;
use crate::error::ApiError;
use crate::execute::{ExecuteRequest, RequestSpec, prepare_run};

/// The background work of jobs on one node; [`JobsRuntime::shutdown`] stops it.
#[derive(Debug)]
pub struct JobsRuntime {
    stop: watch::Sender<bool>,
    workers: JoinSet<()>,
    background: JoinSet<()>,
}

impl JobsRuntime {
    /// Stop claiming jobs, let running ones finish for up to `grace`, then
    /// drop the rest (their leases run out and another worker runs them).
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.send_replace(true);
        self.background.abort_all();
        let finished = tokio::time::timeout(grace, async { while self.workers.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tracing::warn!(
                "jobs still running after {} s; leaving them to be run again elsewhere",
                grace.as_secs()
            );
            self.workers.abort_all();
        }
        while self.background.join_next().await.is_some() {}
    }
}

/// This worker's name in attempts and audit rows: `host-pid-random`.
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() { "host".to_owned() } else { host };
    let mut random = [0u8; 2];
    let _ = getrandom::fill(&mut random);
    format!("{host}-{}-{}", std::process::id(), hex::encode(random))
}

/// Start the jobs' background work on this node, with `workers` jobs at
/// once (0: accept and dispatch jobs, run none). Call inside the tokio runtime.
pub fn start(state: &AppState, workers: usize) -> JobsRuntime {
    let jobs = state.jobs().clone();
    let config = jobs.config().clone();
    let name: Arc<str> = Arc::from(worker_name());
    let (stop, stopped) = watch::channel(false);
    let mut background = JoinSet::new();
    // NATS wake-ups for idle workers; with the embedded backend, local submissions.
    let (arrived, arrivals) = watch::channel(0u64);
    let wake = match &config.backend {
        JobsBackend::Database => jobs.inner.submitted.subscribe(),
        JobsBackend::Nats(url) => {
            background.spawn(connect_and_dispatch(jobs.clone(), url.clone(), arrived));
            arrivals
        }
    };
    background.spawn(sweep(state.clone(), name.clone()));
    background.spawn(prune(jobs.clone()));
    let mut pool = JoinSet::new();
    state.metrics().set_job_workers(workers);
    for _ in 0..workers {
        pool.spawn(work(state.clone(), name.clone(), stopped.clone(), wake.clone()));
    }
    tracing::info!(worker = %name, workers, backend = backend_name(&config.backend), "jobs started");
    JobsRuntime {
        stop,
        workers: pool,
        background,
    }
}

fn backend_name(backend: &JobsBackend) -> &'static str {
    match backend {
        JobsBackend::Database => "database",
        JobsBackend::Nats(_) => "nats",
    }
}

/// Connect to NATS (retrying while it is away), then publish due jobs for
/// as long as the node runs.
async fn connect_and_dispatch(jobs: Jobs, url: String, arrived: watch::Sender<u64>) {
    let config = jobs.config().clone();
    let mut wait = Duration::from_millis(250);
    let queue = loop {
        match Queue::connect(&url, &config.prefix, config.lease).await {
            Ok(queue) => break queue,
            Err(e) => {
                tracing::warn!(
                    "{e}; retrying in {wait:?} (jobs are accepted meanwhile and dispatched once it answers)"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    };
    tracing::info!(url = %avap_hostfns::redact::url(&url), "jobs: connected to NATS JetStream");
    match queue.wake_ups().await {
        Ok(mut subscriber) => {
            tokio::spawn(async move {
                use futures_util::StreamExt as _;
                while subscriber.next().await.is_some() {
                    arrived.send_modify(|n| *n = n.wrapping_add(1));
                }
            });
        }
        Err(e) => tracing::warn!("{e}; idle workers look every {:?} instead", nats::IDLE),
    }
    let _ = jobs.inner.nats.set(queue);
    let Some(queue) = jobs.inner.nats.get() else { return };
    let mut submitted = jobs.inner.submitted.subscribe();
    loop {
        submitted.borrow_and_update();
        dispatch_due(&jobs, queue).await;
        tokio::select! {
            _ = submitted.changed() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Publish every due job NATS does not have yet (several nodes may do it
/// at once: the stream's duplicate window keeps one copy).
async fn dispatch_due(jobs: &Jobs, queue: &Queue) {
    let redispatch = i64::try_from(nats::REDISPATCH.as_millis()).unwrap_or(i64::MAX);
    loop {
        let due = match jobs.store().undispatched(redispatch, 256).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!("jobs: cannot read due jobs to dispatch: {e:#}");
                return;
            }
        };
        let full = due.len() == 256;
        for (id, attempts, priority) in due {
            if let Err(e) = queue.publish(&id, attempts, priority).await {
                // Still undispatched in the database: the next round tries again.
                tracing::warn!("{e}");
                return;
            }
            if let Err(e) = jobs.store().mark_dispatched(&id, attempts).await {
                tracing::warn!("jobs: cannot mark job {id} dispatched: {e:#}");
            }
        }
        if !full {
            return;
        }
    }
}

/// Find running jobs whose lease ran out and queue them again.
async fn sweep(state: AppState, name: Arc<str>) {
    let jobs = state.jobs().clone();
    let every = (jobs.config().lease / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match jobs.store().expire_leases(&name).await {
            Ok(changed) => {
                for (id, new_state) in &changed {
                    tracing::warn!(job = %id, state = new_state.as_str(), "jobs: a worker lost job {id} (its lease ran out)");
                    state.metrics().job_attempt("lost");
                    if *new_state == JobState::Dead {
                        state.metrics().job_finished("dead");
                    } else {
                        state.metrics().job_retried();
                    }
                }
                if !changed.is_empty() {
                    jobs.announce();
                }
            }
            Err(e) => tracing::warn!("jobs: cannot look for lost jobs: {e:#}"),
        }
    }
}

/// Delete finished jobs older than `jobs_retention_s`.
async fn prune(jobs: Jobs) {
    let retention = jobs.config().retention;
    let every = (retention / 2).clamp(Duration::from_millis(500), Duration::from_hours(1));
    loop {
        tokio::time::sleep(every).await;
        let cutoff = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        match jobs.store().prune(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "jobs finished longer than jobs_retention_s ago deleted"),
            Err(e) => tracing::warn!("jobs: cannot prune finished jobs: {e:#}"),
        }
    }
}

/// One worker: claim a due job, run it, record how it ended; again.
async fn work(state: AppState, name: Arc<str>, mut stop: watch::Receiver<bool>, mut wake: watch::Receiver<u64>) {
    let jobs = state.jobs().clone();
    let lease_ms = i64::try_from(jobs.config().lease.as_millis()).unwrap_or(i64::MAX);
    while !*stop.borrow() {
        wake.borrow_and_update();
        // Only claim what can start now: wait for a free slot, without keeping it.
        tokio::select! {
            slot = state.run_slot() => drop(slot),
            _ = stop.changed() => continue,
        }
        let found = match &jobs.config().backend {
            JobsBackend::Database => jobs
                .store()
                .claim_next(&name, lease_ms)
                .await
                .map(|c| c.map(|c| (c, None)))
                .map_err(|e| format!("{e:#}")),
            JobsBackend::Nats(_) => match jobs.inner.nats.get() {
                Some(queue) => next_from_nats(&jobs, queue, &name, lease_ms).await,
                None => Ok(None),
            },
        };
        match found {
            Ok(Some((claimed, message))) => run_claimed(&state, &name, claimed, message).await,
            Ok(None) => {
                let idle = match jobs.config().backend {
                    JobsBackend::Database => POLL,
                    JobsBackend::Nats(_) => nats::IDLE,
                };
                tokio::select! {
                    _ = wake.changed() => {}
                    () = tokio::time::sleep(idle) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!("jobs: cannot claim a job: {e}");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// The next job NATS points at that this worker could claim.
async fn next_from_nats(
    jobs: &Jobs,
    queue: &Queue,
    name: &str,
    lease_ms: i64,
) -> Result<Option<(Claimed, Option<jetstream::Message>)>, String> {
    loop {
        let Some((pointer, message)) = queue.next().await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        match jobs
            .store()
            .claim(&pointer.id, pointer.attempts, name, lease_ms)
            .await
            .map_err(|e| format!("{e:#}"))?
        {
            Claim::Claimed(claimed) => return Ok(Some((claimed, Some(message)))),
            Claim::NotYet(run_at) => {
                let wait = u64::try_from(run_at - now_ms()).unwrap_or(0).max(10);
                nats::settle(&message, AckKind::Nak(Some(Duration::from_millis(wait)))).await;
            }
            Claim::Gone => nats::settle(&message, AckKind::Ack).await,
        }
    }
}

/// Run a claimed job under its lease and record how it ended.
async fn run_claimed(state: &AppState, name: &str, claimed: Claimed, message: Option<jetstream::Message>) {
    let jobs = state.jobs();
    let metrics = state.metrics();
    let lease = jobs.config().lease;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    #[allow(clippy::cast_precision_loss)] // milliseconds
    metrics.job_started((now_ms() - claimed.due_at).max(0) as f64 / 1000.0);
    let started = Instant::now();
    let run = execute(state, &claimed);
    tokio::pin!(run);
    let mut beat = tokio::time::interval(lease / 3);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let result = loop {
        tokio::select! {
            result = &mut run => break Some(result),
            _ = beat.tick() => match jobs.store().extend_lease(&claimed.id, claimed.attempt, lease_ms).await {
                Ok(true) => {
                    if let Some(message) = &message {
                        nats::settle(message, AckKind::Progress).await;
                    }
                }
                // Cancelled, or requeued after the lease ran out: not ours any more.
                Ok(false) => break None,
                // The lease runs on; if the database stays away, the job is run again elsewhere.
                Err(e) => tracing::warn!(job = %claimed.id, "jobs: cannot renew a lease: {e:#}"),
            },
        }
    };
    metrics.job_ran(started.elapsed());
    match result {
        None => {
            tracing::info!(job = %claimed.id, attempt = claimed.attempt, "jobs: stopped a run: the job was cancelled or given to another worker");
            metrics.job_attempt("stopped");
        }
        Some(result) => match jobs.store().finish(&claimed, name, finish(result)).await {
            Ok(Some(new_state)) => {
                let outcome = match new_state {
                    JobState::Succeeded => "succeeded",
                    JobState::Failed => "failed",
                    _ => "dead",
                };
                metrics.job_attempt(outcome);
                match new_state {
                    JobState::Failed => metrics.job_retried(),
                    finished if finished.is_finished() => metrics.job_finished(finished.as_str()),
                    _ => {}
                }
                if new_state == JobState::Failed {
                    // Its retry is due later: the poll (or the dispatcher) finds it.
                    jobs.announce();
                }
            }
            Ok(None) => {
                tracing::info!(job = %claimed.id, "jobs: a finished attempt was no longer the job's (cancelled or lost meanwhile); its outcome is dropped");
            }
            Err(e) => {
                tracing::error!(job = %claimed.id, "jobs: cannot record how a job ended (it will run again when its lease runs out): {e:#}");
            }
        },
    }
    if let Some(message) = &message {
        nats::settle(message, AckKind::Ack).await;
    }
}

/// Run a job's script once, in a run slot (waited for), with the job's limits.
async fn execute(state: &AppState, claimed: &Claimed) -> Result<RunReport, ApiError> {
    let mut body: ExecuteRequest = serde_json::from_str(&claimed.spec)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("job {} has an unreadable spec: {e}", claimed.id)))?;
    // The script can tell its attempts apart, and make its effects
    // idempotent: `addParam(avap_job_id, id)` (scripts read the query, not headers).
    let request = body.request.get_or_insert_with(RequestSpec::default);
    request
        .query
        .insert("avap_job_id".to_owned(), Value::from(claimed.id.clone()));
    request
        .query
        .insert("avap_job_attempt".to_owned(), Value::from(claimed.attempt));
    let max = Limits {
        time_ms: u64::try_from(state.jobs().config().max_time.as_millis()).unwrap_or(u64::MAX),
        ..state.live().limits
    };
    let stored = claimed.script.clone();
    let run = async {
        let slot = state.run_slot().await;
        let mut target = RunTarget::default();
        let prepared = prepare_run(state, body, &mut target, max).await?;
        state.execute_in_slot(slot, prepared).await
    };
    state.metrics().run(stored.as_deref(), Box::pin(run)).await
}

/// How a run's result ends the attempt.
fn finish(result: Result<RunReport, ApiError>) -> Finish {
    match result {
        Ok(report) => {
            let error = report.envelope.error().cloned();
            let response = json!({"status": report.http_status, "body": report.envelope});
            match error {
                None => Finish::Succeeded { result: response },
                Some(error) => {
                    let kind = error["kind"].as_str().unwrap_or_default();
                    let message = if kind == "InternalError" {
                        // As for a request: logged, not shown.
                        tracing::error!("internal error in a job's run: {}", error["message"]);
                        "internal error while running the script".into()
                    } else {
                        error["message"].clone()
                    };
                    Finish::Failed {
                        error: json!({"kind": kind, "message": message}),
                        // A compile error fails the same way every time.
                        retryable: kind != "CompileError",
                        result: Some(response),
                    }
                }
            }
        }
        Err(e) => {
            // Refusals of what the job asks for are permanent; the rest
            // (busy, database away, our faults) may pass.
            let retryable = !matches!(
                e,
                ApiError::ScriptNotFound { .. }
                    | ApiError::NotMirrored { .. }
                    | ApiError::CapabilityDenied(_)
                    | ApiError::InvalidRequest { .. }
                    | ApiError::ScriptTooLarge { .. }
            );
            if let ApiError::Internal(detail) = &e {
                tracing::error!("internal error in a job: {detail:#}");
            }
            Finish::Failed {
                error: json!({"kind": e.kind(), "message": e.to_string()}),
                result: None,
                retryable,
            }
        }
    }
}
