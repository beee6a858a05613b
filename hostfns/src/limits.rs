//! Sandbox limits: their kinds, and the error that ends a run.

use std::fmt;

/// Which limit ended a run (spec §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum LimitKind {
    FuelExhausted,
    TimeLimit,
    MemoryLimit,
    StackOverflow,
    OutputLimit,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::FuelExhausted => "FuelExhausted",
            LimitKind::TimeLimit => "TimeLimit",
            LimitKind::MemoryLimit => "MemoryLimit",
            LimitKind::StackOverflow => "StackOverflow",
            LimitKind::OutputLimit => "OutputLimit",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sandbox limit was hit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct LimitHit {
    pub kind: LimitKind,
    pub message: String,
}

impl LimitHit {
    pub fn new(kind: LimitKind, message: impl Into<String>) -> Self {
        LimitHit {
            kind,
            message: message.into(),
        }
    }
}
