//! Catchable runtime errors (spec §5, conformance README "Error kinds").

use std::fmt;

/// Kinds of errors a script can catch with `try()`. Sandbox limits are not
/// here: they are not catchable and belong to the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NameError,
    TypeError,
    ValueError,
    ZeroDivisionError,
    IndexError,
    KeyError,
    IntegerOverflow,
    HttpError,
    DatabaseError,
    TimeoutError,
    UserError,
    CapabilityDenied,
    MethodNotAllowed,
    NotFound,
    /// A command that this build does not provide yet.
    NotAvailable,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::NameError,
        ErrorKind::TypeError,
        ErrorKind::ValueError,
        ErrorKind::ZeroDivisionError,
        ErrorKind::IndexError,
        ErrorKind::KeyError,
        ErrorKind::IntegerOverflow,
        ErrorKind::HttpError,
        ErrorKind::DatabaseError,
        ErrorKind::TimeoutError,
        ErrorKind::UserError,
        ErrorKind::CapabilityDenied,
        ErrorKind::MethodNotAllowed,
        ErrorKind::NotFound,
        ErrorKind::NotAvailable,
    ];

    /// The kind's name as it appears in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NameError => "NameError",
            ErrorKind::TypeError => "TypeError",
            ErrorKind::ValueError => "ValueError",
            ErrorKind::ZeroDivisionError => "ZeroDivisionError",
            ErrorKind::IndexError => "IndexError",
            ErrorKind::KeyError => "KeyError",
            ErrorKind::IntegerOverflow => "IntegerOverflow",
            ErrorKind::HttpError => "HttpError",
            ErrorKind::DatabaseError => "DatabaseError",
            ErrorKind::TimeoutError => "TimeoutError",
            ErrorKind::UserError => "UserError",
            ErrorKind::CapabilityDenied => "CapabilityDenied",
            ErrorKind::MethodNotAllowed => "MethodNotAllowed",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::NotAvailable => "NotAvailable",
        }
    }

    /// Stable numeric code used across the wasm ABI.
    pub fn code(self) -> i32 {
        ErrorKind::ALL
            .iter()
            .position(|k| *k == self)
            .map_or(0, |i| i32::try_from(i).unwrap_or(0))
    }

    pub fn from_code(code: i32) -> Option<ErrorKind> {
        usize::try_from(code).ok().and_then(|i| ErrorKind::ALL.get(i).copied())
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A catchable error raised by a command or an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct AvapError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AvapError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AvapError {
            kind,
            message: message.into(),
        }
    }
}

/// Why a host call could not complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    /// A catchable script error.
    #[error(transparent)]
    Script(#[from] AvapError),
    /// A sandbox limit: ends the run, never catchable.
    #[error("{0}")]
    Limit(#[from] crate::limits::LimitHit),
}

impl HostError {
    pub fn script(kind: ErrorKind, message: impl Into<String>) -> Self {
        HostError::Script(AvapError::new(kind, message))
    }
}
