//! Per-run host state (`Store<RunState>`): the heap, the request, the
//! response being built, and the services commands see.

use std::collections::HashMap;

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
    pub results: IndexMap<String, serde_json::Value>,
    result_sizes: HashMap<String, u64>,
    pub output_bytes: u64,
    pub output_limit: u64,
    pub endpoints: Vec<Endpoint>,
    pub async_results: HashMap<String, Result<Value, HostError>>,
    /// Fuel available to the current host call, and how much it used.
    pub fuel_available: u64,
    pub fuel_charged: u64,
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
        }
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

    fn add_result(&mut self, key: &str, value: &Value) -> Result<(), HostError> {
        let json = value.to_json();
        // Counted, not collected: the envelope is serialised once, at the end.
        let mut counter = ByteCounter(0);
        let size = serde_json::to_writer(&mut counter, &json).map_or(0, |()| counter.0) + key.len() as u64 + 4;
        let old = self.result_sizes.get(key).copied().unwrap_or(0);
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
        self.output_bytes = next;
        self.result_sizes.insert(key.to_owned(), size);
        self.results.insert(key.to_owned(), json);
        Ok(())
    }

    fn register_endpoint(&mut self, endpoint: Endpoint) -> Result<(), HostError> {
        self.endpoints.push(endpoint);
        Ok(())
    }

    fn async_result(&mut self, id: &str) -> Option<Result<Value, HostError>> {
        self.async_results.get(id).cloned()
    }
}

/// An `io::Write` that only counts: the size of a value's JSON text
/// without building the text.
struct ByteCounter(u64);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
