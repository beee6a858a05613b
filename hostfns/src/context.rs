//! What a command may see and touch: the [`HostContext`] trait.
//!
//! The runtime implements it per run (request, response, clock, CSPRNG, fuel,
//! output accounting); tests implement it with plain data. Commands never
//! reach anything that is not behind this trait.

use crate::error::HostError;
use crate::memory::MemoryBudget;
use crate::value::Value;

/// The HTTP request a script sees (`addParam`, `getQueryParamList`, routing).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Query parameters in order (a key may repeat).
    pub query: Vec<(String, String)>,
    /// The JSON body, when there is one.
    pub json: Option<serde_json::Value>,
    /// Form fields in order.
    pub form: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
}

/// A route declared with `registerEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub path: String,
    /// Upper-case HTTP method.
    pub method: String,
    /// Names of middleware functions, run in order before the handler.
    pub middleware: Vec<String>,
    pub description: String,
    pub handler: String,
    /// Variable returned as the result when the handler made no `addResult`.
    pub output: Option<String>,
}

/// Per-run services available to commands.
pub trait HostContext {
    /// The request being served.
    fn request(&self) -> &Request;
    /// Current time (the conformance runner may fix it).
    fn now(&self) -> chrono::DateTime<chrono::Utc>;
    /// The server's configured time zone (default UTC).
    fn time_zone(&self) -> &crate::zone::Zone;
    /// Fill `buf` from a CSPRNG.
    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError>;
    /// Charge `units` of fuel for host work (roughly one unit per byte or
    /// item touched). Fails with `FuelExhausted` when the budget is spent.
    fn charge(&mut self, units: u64) -> Result<(), HostError>;
    /// What is left of the run's memory during this call: commands claim
    /// what they are about to allocate from it first (see
    /// [`crate::memory`]). For `variableToList` and `AddvariableToJSON`, its
    /// net is what the target grew by.
    fn memory(&mut self) -> &mut MemoryBudget;
    /// The request and the memory budget at once (decoding a request value
    /// claims memory while reading the request).
    fn request_and_memory(&mut self) -> (&Request, &mut MemoryBudget);
    /// `TimeLimit` once the run's wall-clock deadline has passed. Host work
    /// that can run long in one call (matching a regex over a large text)
    /// checks it as it goes: the epoch ticks that bound wasm time cannot
    /// interrupt host code.
    fn check_time(&self) -> Result<(), HostError> {
        Ok(())
    }
    /// Record `value` under `key` in the response result (a snapshot),
    /// charging fuel for its size.
    /// Fails with `OutputLimit` when the response would grow past its cap.
    fn add_result(&mut self, key: &str, value: &Value) -> Result<(), HostError>;
    /// Declare a route.
    fn register_endpoint(&mut self, endpoint: Endpoint) -> Result<(), HostError>;
    /// Where the `go_async` block `id` stands: finished (the dict of
    /// variables it assigned, or the error it failed with), still running
    /// (the runtime already waited for it as long as `gather` asked), or
    /// unknown.
    fn async_result(&mut self, id: &str) -> AsyncState;
}

/// What [`HostContext::async_result`] knows of a `go_async` block.
#[derive(Debug, Clone, PartialEq)]
pub enum AsyncState {
    /// No block with that id was started in this run.
    Unknown,
    /// Started and not finished.
    Running,
    /// Finished: the variables it assigned, or its error.
    Done(Result<Value, HostError>),
}
