//! Per-run host state (`Store<RunState>`): the heap, the request, the
//! response being built, and the services commands see.

use std::sync::Arc;

use avap_hostfns::memory::{self, MemoryBudget};
use avap_hostfns::{AsyncState, AvapError, Endpoint, HostContext, HostError, LimitHit, LimitKind, Request};
use wasmtime::{Memory, ResourceLimiter};

use crate::heap::Heap;
use crate::shared::RunShared;

/// Where in the wasm code an error was raised: `(function index, offset in
/// the function body)`, mapped to a source line through `avap.srcmap`.
pub type CodeLocation = (u32, u32);

/// Everything a run's host functions share.
pub struct RunState {
    pub heap: Heap,
    pub services: Services,
    pub memory: Option<Memory>,
    /// The catchable error waiting for a `try` handler (or ending the run).
    pub pending: Option<(AvapError, Option<CodeLocation>)>,
    /// Value of an endpoint handler's `output` variable at its return.
    pub output: Option<(i32, i64)>,
    pub limiter: MemoryLimiter,
    /// Loop iterations between garbage-collection polls, as last chosen.
    pub poll_interval: u64,
    /// The module's `gc_countdown` global (absent in format-1 modules).
    pub gc_countdown: Option<wasmtime::Global>,
    /// Number of top-level variable slots (the collector's roots), read
    /// from the module's `global_count` export once per run.
    pub global_count: u32,
    /// What the effect commands may reach, and the run's deadline.
    pub effects: crate::effects::RunEffects,
    /// Fuel leased to this store from the run's pool since it last settled
    /// (see `crate::shared`).
    pub fuel_given: u64,
    /// An epoch tick passed while other flows are live: the next command
    /// settles the lease (an exact point) before it runs.
    pub rebalance: bool,
    /// The bytes this store last published to the run.
    pub published: u64,
    /// The epoch callback yielded: its next call (right after the store
    /// resumes) refreshes what the rest of the run uses.
    pub resumed: bool,
}

impl RunState {
    /// A fresh state for one flow (the main flow or a block) of `run`.
    pub fn new(run: &Arc<RunShared>) -> RunState {
        let limits = run.limits;
        RunState {
            heap: Heap::new(limits.memory_bytes),
            services: Services::new(Arc::clone(run)),
            memory: None,
            pending: None,
            output: None,
            limiter: MemoryLimiter {
                limit: limits.memory_bytes,
            },
            poll_interval: 1,
            gc_countdown: None,
            global_count: 0,
            effects: crate::effects::RunEffects {
                effects: run.effects.clone(),
                deadline: run.deadline,
            },
            fuel_given: 0,
            rebalance: false,
            published: 0,
            resumed: false,
        }
    }
}

/// The part of the run state commands see through [`HostContext`].
pub struct Services {
    pub request: Arc<Request>,
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// The run this store belongs to: results, blocks, shared budgets.
    pub run: Arc<RunShared>,
    pub endpoints: Vec<Endpoint>,
    /// Fuel available to the current host call, and how much it used.
    pub fuel_available: u64,
    pub fuel_charged: u64,
    /// Memory the current host call may claim (set from the heap per call).
    pub memory: MemoryBudget,
    /// The run's wall-clock deadline (`None` when unmetered).
    pub deadline: Option<std::time::Instant>,
    /// Bytes of routes kept for the rest of the run.
    retained: u64,
}

impl Services {
    pub fn new(run: Arc<RunShared>) -> Services {
        Services {
            request: Arc::clone(&run.request),
            now: run.now,
            deadline: run.deadline,
            run,
            endpoints: Vec::new(),
            fuel_available: 0,
            fuel_charged: 0,
            memory: MemoryBudget::new(0),
            retained: 0,
        }
    }

    /// Bytes this store keeps for the rest of the run (the heap counts them).
    pub fn retained(&self) -> u64 {
        self.retained
    }

    /// Keep `bytes` more until the run ends (already claimed).
    pub fn retain(&mut self, bytes: u64) {
        self.retained = self.retained.saturating_add(bytes);
    }
}

impl HostContext for Services {
    fn request(&self) -> &Request {
        &self.request
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.now.unwrap_or_else(chrono::Utc::now)
    }

    fn time_zone(&self) -> &avap_hostfns::zone::Zone {
        &self.run.time_zone
    }

    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        getrandom::fill(buf).map_err(|e| HostError::script(avap_hostfns::ErrorKind::ValueError, e.to_string()))
    }

    fn charge(&mut self, units: u64) -> Result<(), HostError> {
        self.fuel_charged = self.fuel_charged.saturating_add(units);
        if self.fuel_charged > self.fuel_available {
            return Err(LimitHit::new(LimitKind::FuelExhausted, "all fuel consumed (in a host call)").into());
        }
        Ok(())
    }

    fn memory(&mut self) -> &mut MemoryBudget {
        &mut self.memory
    }

    fn check_time(&self) -> Result<(), HostError> {
        match self.deadline {
            Some(deadline) if std::time::Instant::now() >= deadline => {
                Err(LimitHit::new(LimitKind::TimeLimit, "wall-clock time limit reached (in a host call)").into())
            }
            _ => Ok(()),
        }
    }

    fn request_and_memory(&mut self) -> (&Request, &mut MemoryBudget) {
        (&*self.request, &mut self.memory)
    }

    fn add_result(&mut self, key: &str, value: &avap_hostfns::Value) -> Result<(), HostError> {
        let run = Arc::clone(&self.run);
        let mut results = run.lock_results();
        let written = results.write(key, value, self.memory.remaining().available())?;
        let (memory, old_memory) = (written.memory, written.old_memory);
        self.charge(memory / crate::linker::BYTES_PER_FUEL)?;
        self.memory.claim(memory)?;
        results.insert(key, written);
        drop(results);
        // The snapshot belongs to the run, not to this store: a block's
        // results outlive its store.
        run.keep(memory);
        run.release(old_memory);
        Ok(())
    }

    fn register_endpoint(&mut self, endpoint: Endpoint) -> Result<(), HostError> {
        // The texts were claimed as the command built them; they stay.
        let texts = [
            &endpoint.path,
            &endpoint.method,
            &endpoint.description,
            &endpoint.handler,
        ];
        let kept = texts.iter().map(|t| memory::alloc_bytes(t.len())).sum::<u64>()
            + endpoint
                .middleware
                .iter()
                .map(|m| memory::alloc_bytes(m.len()) + 24)
                .sum::<u64>()
            + std::mem::size_of::<Endpoint>() as u64;
        self.memory.claim(std::mem::size_of::<Endpoint>() as u64)?;
        self.retain(kept);
        self.endpoints.push(endpoint);
        Ok(())
    }

    fn async_result(&mut self, id: &str) -> AsyncState {
        let mut blocks = self.run.lock_blocks();
        let Some(entry) = blocks.by_id.get_mut(id) else {
            return AsyncState::Unknown;
        };
        let state = match &entry.outcome {
            None => return AsyncState::Running,
            Some(Ok(v)) => AsyncState::Done(
                self.memory
                    .clone_value(v)
                    .map(|(copy, _)| copy)
                    .map_err(HostError::from),
            ),
            Some(Err(e)) => AsyncState::Done(Err(e.clone())),
        };
        if !std::mem::replace(&mut entry.gathered, true) {
            blocks.live = blocks.live.saturating_sub(1);
        }
        state
    }
}

/// Caps linear memory growth at the run's memory limit and reports it as
/// `MemoryLimit` (wasmtime's own limiter would only make `memory.grow` fail).
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimiter {
    pub limit: u64,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            return Err(wasmtime::Error::new(LimitHit::new(
                LimitKind::MemoryLimit,
                format!(
                    "linear memory of {desired} bytes exceeds the limit of {} bytes",
                    self.limit
                ),
            )));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}
