//! Per-run host state (`Store<RunState>`): the heap, the request, the
//! response being built, and the services commands see.

use std::collections::HashMap;

use avap_hostfns::memory::{self, MemoryBudget};
use avap_hostfns::{AvapError, Endpoint, HostContext, HostError, LimitHit, LimitKind, Request, Value};
use indexmap::IndexMap;
use wasmtime::{Memory, ResourceLimiter};

use crate::heap::Heap;

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
}

/// The part of the run state commands see through [`HostContext`].
pub struct Services {
    pub request: Request,
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    pub time_zone: chrono_tz::Tz,
    /// `addResult` snapshots, as JSON.
    pub results: IndexMap<String, serde_json::Value>,
    /// Per result: its JSON size (the output limit) and its memory.
    result_sizes: HashMap<String, (u64, u64)>,
    pub output_bytes: u64,
    pub output_limit: u64,
    pub endpoints: Vec<Endpoint>,
    pub async_results: HashMap<String, Result<Value, HostError>>,
    /// Fuel available to the current host call, and how much it used.
    pub fuel_available: u64,
    pub fuel_charged: u64,
    /// Memory the current host call may claim (set from the heap per call).
    pub memory: MemoryBudget,
    /// The run's wall-clock deadline (`None` when unmetered).
    pub deadline: Option<std::time::Instant>,
    /// Bytes of results, routes and async results kept for the rest of the run.
    retained: u64,
}

impl Services {
    pub fn new(request: Request, time_zone: chrono_tz::Tz, output_limit: u64) -> Services {
        Services {
            request,
            now: None,
            time_zone,
            results: IndexMap::new(),
            result_sizes: HashMap::new(),
            output_bytes: 0,
            output_limit,
            endpoints: Vec::new(),
            async_results: HashMap::new(),
            fuel_available: 0,
            fuel_charged: 0,
            memory: MemoryBudget::new(0),
            deadline: None,
            retained: 0,
        }
    }

    /// Bytes kept for the rest of the run (the heap counts them).
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

    fn time_zone(&self) -> chrono_tz::Tz {
        self.time_zone
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
        (&self.request, &mut self.memory)
    }

    fn add_result(&mut self, key: &str, value: &Value) -> Result<(), HostError> {
        // Measured, not built: the envelope is serialised once, at the end.
        let size = value.json_len().saturating_add(key.len() as u64 + 4);
        let (old, old_memory) = self.result_sizes.get(key).copied().unwrap_or((0, 0));
        let next = self.output_bytes - old + size;
        if next > self.output_limit {
            return Err(LimitHit::new(
                LimitKind::OutputLimit,
                format!(
                    "response result would be {next} bytes; the limit is {} bytes",
                    self.output_limit
                ),
            )
            .into());
        }
        // The snapshot is kept as JSON: about the size of the value itself
        // (a `serde_json::Value` tree of the same shape), claimed first.
        let kept = value.footprint().bytes + memory::VALUE_BYTES + memory::alloc_bytes(key.len());
        self.charge(kept / crate::linker::BYTES_PER_FUEL)?;
        self.memory.claim(kept)?;
        self.output_bytes = next;
        self.result_sizes.insert(key.to_owned(), (size, kept));
        self.results.insert(key.to_owned(), value.to_json());
        self.retained = self.retained.saturating_sub(old_memory).saturating_add(kept);
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

    fn async_result(&mut self, id: &str) -> Option<Result<Value, HostError>> {
        Some(match self.async_results.get(id)? {
            Ok(v) => self
                .memory
                .clone_value(v)
                .map(|(copy, _)| copy)
                .map_err(HostError::from),
            Err(e) => Err(e.clone()),
        })
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
