//! Commands with outside effects (`avap_hostfns::effects`): linked as async
//! host functions, so a run awaiting the network or a database gives its
//! thread back to the executor.
//!
//! Each call reads its argument slots out of the heap into owned values,
//! awaits `avap_hostfns::effects::call` under the run's wall-time deadline
//! (the epoch callback cannot fire while the host awaits, so the await
//! itself is bounded and ends the run with `TimeLimit`), writes the result
//! back as the command's value and charges fuel for the bytes produced.
//!
//! Each call runs in a `host_call` span (a child of whatever span the run
//! is in): the command, its capability class, the outcome, and what the
//! `hostfns` side records — the host and port reached, or the database
//! system. Never arguments: URLs' query strings, credentials and SQL
//! parameters stay out of traces.

use std::time::Instant;

use avap_hostfns::abi;
use avap_hostfns::effects::{self, EffectOutcome, Effects};
use avap_hostfns::signature::{CommandSig, ParamKind};
use avap_hostfns::{HostError, LimitHit, LimitKind};
use tracing::Instrument as _;
use wasmtime::{AsContextMut as _, Caller, Linker};

use crate::linker::{BYTES_PER_FUEL, call_slots, charge, raise, to_pair, value};
use crate::state::RunState;

type Pair = (i32, i64);
type Res<T> = wasmtime::Result<T>;

/// The outside world of one run: what the deployment configured, and the
/// run's wall-clock deadline (`None` when unmetered).
#[derive(Debug, Clone, Default)]
pub struct RunEffects {
    pub effects: Effects,
    pub deadline: Option<Instant>,
}

/// Link every effect command as an async host function, replacing the
/// synchronous adapter `linker::build` defined for it.
pub fn register(l: &mut Linker<RunState>) -> Res<()> {
    l.allow_shadowing(true);
    for sig in avap_hostfns::commands().iter().filter(|s| effects::is_effect(s.name)) {
        l.func_wrap_async(
            abi::COMMAND_MODULE,
            sig.name,
            move |mut c: Caller<'_, RunState>, (ptr, argc): (i32, i32)| {
                Box::new(async move { call(&mut c, sig, ptr, argc).await })
            },
        )?;
    }
    // `gather` waits for a block before the command reads its outcome.
    let gather = avap_hostfns::command("gather").expect("gather is a command");
    l.func_wrap_async(
        abi::COMMAND_MODULE,
        gather.name,
        move |mut c: Caller<'_, RunState>, (ptr, argc): (i32, i32)| {
            Box::new(async move { crate::blocks::gather(&mut c, gather, ptr, argc).await })
        },
    )?;
    l.allow_shadowing(false);
    Ok(())
}

/// One effect command call: the arguments out of the heap, the awaited
/// effect under the run's deadline, the result back into the heap.
async fn call(c: &mut Caller<'_, RunState>, sig: &'static CommandSig, ptr: i32, argc: i32) -> Res<Pair> {
    let (form_index, slots) = call_slots(c, sig, ptr, argc)?;
    // Copies of the values of every slot but the target's, claimed from the
    // run's memory; what is left of it bounds what the effect decodes.
    let mut args = Vec::new();
    let mut memory = c.data().heap.budget();
    let mut at = 0;
    for p in sig.forms[form_index] {
        let width = if p.kind == ParamKind::Name { 2 } else { 1 };
        if p.kind != ParamKind::Target {
            for &(t, v) in &slots[at..at + width] {
                args.push(memory.clone_value(value(&c.data().heap, t, v)?.as_ref())?.0);
            }
        }
        at += width;
    }
    // While this flow waits, the run's other flows may allocate too: the
    // response is decoded within this flow's share of what is left (the
    // value it becomes is checked against the whole run's memory again
    // when it is stored).
    let memory = avap_hostfns::MemoryBudget::new(memory.remaining().available() / c.data().services.run.flows());
    let fx = c.data().effects.clone();
    crate::shared::suspend(c.as_context_mut())?;
    let span = tracing::info_span!(
        "host_call",
        otel.name = sig.name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        command = sig.name,
        capability = sig.capability.as_str(),
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        db.system = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let work = effects::call(sig.name, form_index, args, &fx.effects, memory).instrument(span.clone());
    let result = match fx.deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(r) => r,
            Err(_) => {
                span.record("outcome", LimitKind::TimeLimit.as_str());
                span.record("otel.status_code", "error");
                return Err(wasmtime::Error::new(LimitHit::new(
                    LimitKind::TimeLimit,
                    format!("wall-clock time limit reached while {} waited", sig.name),
                )));
            }
        },
        None => work.await,
    };
    crate::shared::resume(c.as_context_mut())?;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(HostError::Script(e)) => e.kind.as_str(),
        Err(HostError::Limit(l)) => l.kind.as_str(),
    };
    span.record("outcome", outcome);
    if outcome != "ok" {
        span.record("otel.status_code", "error");
    }
    match result {
        Ok(EffectOutcome::Value(v)) => {
            charge(c, v.heap_bytes() as u64 / BYTES_PER_FUEL + 1)?;
            to_pair(&mut c.data_mut().heap, v)
        }
        Err(HostError::Script(e)) => {
            raise(c, e);
            Ok((abi::TAG_ERR, 0))
        }
        Err(HostError::Limit(l)) => Err(wasmtime::Error::new(l)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_net_db_ai_command_is_an_effect() {
        let names: Vec<&str> = avap_hostfns::commands()
            .iter()
            .filter(|s| effects::is_effect(s.name))
            .map(|s| s.name)
            .collect();
        for n in ["RequestGet", "RequestPost", "functionAI", "ormDirect", "avapConnector"] {
            assert!(names.contains(&n), "{n}");
        }
        assert!(!effects::is_effect("addVar"));
    }
}
