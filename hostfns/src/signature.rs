//! Command signatures as data (spec §4 and §10, evidence/COMMANDS.md).
//!
//! Each command lists one or more *forms* (accepted parameter lists; only
//! `randomString` has two). A parameter's [`ParamKind`] says how the compiler
//! interprets the argument written in its position.

use serde::Serialize;

/// How an argument in a given position is interpreted (spec §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// A variable name the command writes. Bare or quoted.
    Target,
    /// A variable name the command reads. Bare or quoted.
    Name,
    /// A resolved value: defined bare names give their value, undefined bare
    /// names their own text, literals stay literals, expressions evaluate.
    Value,
    /// Taken as written, quotes optional (comparators, JSON keys, parameter
    /// names).
    Literal,
}

/// Capability class of a command. A deployment's policy allows or denies
/// whole classes; an artifact importing a denied class is refused at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Computes only on its arguments.
    Pure,
    /// Reads the incoming request or writes the response.
    Request,
    /// Reads the clock or the time-zone database.
    Clock,
    /// Draws from the CSPRNG. The spec calls this class `rand`; policy
    /// config and `avap audit --deny` accept both names.
    Random,
    /// Outbound network.
    Net,
    /// Application database.
    Db,
    /// Model endpoint.
    Ai,
    /// Concurrency (`go_async`/`gather`).
    Async,
}

impl Capability {
    /// All classes, in a stable order.
    pub const ALL: [Capability; 8] = [
        Capability::Pure,
        Capability::Request,
        Capability::Clock,
        Capability::Random,
        Capability::Net,
        Capability::Db,
        Capability::Ai,
        Capability::Async,
    ];

    /// The class name used in config files, `avap audit` and artifact metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Pure => "pure",
            Capability::Request => "request",
            Capability::Clock => "clock",
            Capability::Random => "random",
            Capability::Net => "net",
            Capability::Db => "db",
            Capability::Ai => "ai",
            Capability::Async => "async",
        }
    }
}

/// What a call produces besides its effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Returns {
    /// Nothing: the command cannot be used as a value.
    Nothing,
    /// The value it writes to its trailing target parameter. In the
    /// assignment form (`x = cmd(a, b)`) and inside expressions that trailing
    /// target may be left out.
    Target,
    /// A value of its own (`avapConnector`, `gather`); usable as `x = cmd(…)`.
    Value,
}

/// One parameter of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Param {
    pub name: &'static str,
    pub kind: ParamKind,
}

/// The signature of one AVAP command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CommandSig {
    pub name: &'static str,
    /// Accepted parameter lists, most specific first.
    pub forms: &'static [&'static [Param]],
    pub capability: Capability,
    pub returns: Returns,
    /// One line for `avap audit` and editor hovers.
    pub summary: &'static str,
}

impl CommandSig {
    /// The form with exactly `arity` parameters, if any.
    pub fn form_with_arity(&self, arity: usize) -> Option<&'static [Param]> {
        self.forms.iter().copied().find(|f| f.len() == arity)
    }

    /// Smallest and largest number of written arguments over all forms,
    /// counting the trailing target as optional when `target_supplied`
    /// (assignment form or expression use).
    pub fn arity_range(&self, target_supplied: bool) -> (usize, usize) {
        let mut min = usize::MAX;
        let mut max = 0;
        for form in self.forms {
            let full = form.len();
            let low = if target_supplied && self.returns == Returns::Target {
                full - 1
            } else {
                full
            };
            min = min.min(low);
            max = max.max(full);
        }
        (min, max)
    }
}

const fn p(name: &'static str, kind: ParamKind) -> Param {
    Param { name, kind }
}

use ParamKind::{Literal, Name, Target, Value};

macro_rules! sig {
    ($name:literal, $cap:ident, $ret:ident, $summary:literal, [$([$($param:expr),* $(,)?]),+ $(,)?]) => {
        CommandSig {
            name: $name,
            forms: &[$(&[$($param),*]),+],
            capability: Capability::$cap,
            returns: Returns::$ret,
            summary: $summary,
        }
    };
}

/// Every AVAP command, in catalogue order.
static COMMANDS: &[CommandSig] = &[
    sig!(
        "addVar",
        Pure,
        Nothing,
        "Set a variable to a value",
        [[p("target", Target), p("value", Value)]]
    ),
    sig!(
        "addResult",
        Request,
        Nothing,
        "Copy a variable into the response result (snapshot)",
        [[p("name", Name)]]
    ),
    sig!(
        "addParam",
        Request,
        Target,
        "Read a request parameter (query, then JSON body, then form)",
        [[p("param", Literal), p("target", Target)]]
    ),
    sig!(
        "getQueryParamList",
        Request,
        Target,
        "List the query parameters as one-key dicts",
        [[p("target", Target)]]
    ),
    sig!(
        "getListLen",
        Pure,
        Target,
        "Length of a list, string or dict",
        [[p("source", Name), p("target", Target)]]
    ),
    sig!(
        "itemFromList",
        Pure,
        Target,
        "Item of a list by index",
        [[p("source", Name), p("index", Value), p("target", Target)]]
    ),
    sig!(
        "variableToList",
        Pure,
        Target,
        "Append a value to a list, creating it",
        [[p("element", Value), p("target", Target)]]
    ),
    sig!(
        "AddvariableToJSON",
        Pure,
        Target,
        "Set a key of a dict, creating it",
        [[p("key", Value), p("value", Value), p("target", Target)]]
    ),
    sig!(
        "variableFromJSON",
        Pure,
        Target,
        "Read a key of a dict (or JSON text)",
        [[p("source", Value), p("key", Literal), p("target", Target)]]
    ),
    sig!(
        "replace",
        Pure,
        Target,
        "Replace every regex match (plain text if not a regex)",
        [[
            p("source", Value),
            p("pattern", Value),
            p("newValue", Value),
            p("target", Target)
        ]]
    ),
    sig!(
        "getRegex",
        Pure,
        Target,
        "All regex matches joined into one string",
        [[p("source", Value), p("pattern", Value), p("target", Target)]]
    ),
    sig!(
        "randomString",
        Random,
        Target,
        "Random string from a character class (CSPRNG)",
        [
            [p("pattern", Value), p("length", Value), p("target", Target)],
            [p("length", Value), p("target", Target)],
        ]
    ),
    sig!(
        "encodeSHA256",
        Pure,
        Target,
        "Lowercase hex SHA-256 of the UTF-8 text",
        [[p("source", Value), p("target", Target)]]
    ),
    sig!(
        "encodeMD5",
        Pure,
        Target,
        "Lowercase hex MD5 of the UTF-8 text",
        [[p("source", Value), p("target", Target)]]
    ),
    sig!(
        "getDateTime",
        Clock,
        Target,
        "Current time formatted with strftime",
        [[
            p("format", Value),
            p("deltaSeconds", Value),
            p("timeZone", Value),
            p("target", Target)
        ]]
    ),
    sig!(
        "getTimeStamp",
        Clock,
        Target,
        "Parse a date string to epoch seconds",
        [[
            p("dateString", Value),
            p("format", Value),
            p("deltaSeconds", Value),
            p("target", Target)
        ]]
    ),
    sig!(
        "stampToDatetime",
        Clock,
        Target,
        "Format epoch seconds with strftime",
        [[
            p("timestamp", Value),
            p("format", Value),
            p("deltaSeconds", Value),
            p("target", Target)
        ]]
    ),
    sig!(
        "RequestGet",
        Net,
        Target,
        "Outbound HTTP GET (raises HttpError on status >= 400)",
        [[
            p("url", Value),
            p("querystring", Value),
            p("headers", Value),
            p("target", Target)
        ]]
    ),
    sig!(
        "RequestPost",
        Net,
        Target,
        "Outbound HTTP POST (stores {\"error\": …} instead of raising)",
        [[
            p("url", Value),
            p("querystring", Value),
            p("headers", Value),
            p("body", Value),
            p("target", Target)
        ]]
    ),
    sig!(
        "ormDirect",
        Db,
        Target,
        "Run SQL on the application database",
        [[p("sql", Value), p("target", Target)]]
    ),
    sig!(
        "ormCheckTable",
        Db,
        Target,
        "\"True\"/\"False\": does the table exist",
        [[p("table", Value), p("target", Target)]]
    ),
    sig!(
        "ormAccessSelect",
        Db,
        Target,
        "Select fields from a table with a condition",
        [[
            p("fields", Value),
            p("table", Value),
            p("whereSelector", Value),
            p("target", Target)
        ]]
    ),
    sig!(
        "ormAccessInsert",
        Db,
        Target,
        "Insert a row; target gets the affected-row count",
        [[
            p("fields", Value),
            p("table", Value),
            p("values", Value),
            p("target", Target)
        ]]
    ),
    sig!(
        "ormAccessUpdate",
        Db,
        Target,
        "Update rows; target gets the affected-row count",
        [[
            p("fields", Value),
            p("table", Value),
            p("values", Value),
            p("whereSelector", Value),
            p("target", Target)
        ]]
    ),
    sig!(
        "avapConnector",
        Db,
        Value,
        "A connector for a configured named connection",
        [[p("token", Value)]]
    ),
    sig!(
        "functionAI",
        Ai,
        Target,
        "Ask the configured model endpoint",
        [[p("prompt", Value), p("target", Target)]]
    ),
    sig!(
        "gather",
        Async,
        Value,
        "Wait for a go_async block; yields the variables it assigned",
        [[p("id", Value), p("timeoutSeconds", Value)]]
    ),
    sig!(
        "raise",
        Pure,
        Nothing,
        "Raise a catchable UserError",
        [[p("message", Value)]]
    ),
    sig!(
        "registerEndpoint",
        Request,
        Nothing,
        "Serve METHOD PATH with a handler function",
        [[
            p("path", Value),
            p("method", Value),
            p("middleware", Value),
            p("description", Value),
            p("handler", Name),
            p("output", Name),
        ]]
    ),
];

/// All commands, in catalogue order.
pub fn commands() -> &'static [CommandSig] {
    COMMANDS
}

/// Look a command up by its exact (case-sensitive) name.
pub fn command(name: &str) -> Option<&'static CommandSig> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// A function callable inside expressions (spec §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuiltinFn {
    pub name: &'static str,
    pub min_args: usize,
    pub max_args: usize,
    /// The call as written, for editor hovers and completions.
    pub form: &'static str,
    /// One line for editor hovers (what `summary` is for commands).
    pub summary: &'static str,
}

static BUILTINS: &[BuiltinFn] = &[
    BuiltinFn {
        name: "str",
        min_args: 0,
        max_args: 1,
        form: "str(value)",
        summary: "Text of a value, as Python's `str()`",
    },
    BuiltinFn {
        name: "int",
        min_args: 0,
        max_args: 1,
        form: "int(value)",
        summary: "Integer from a number or a numeric string, as Python's `int()`",
    },
    BuiltinFn {
        name: "float",
        min_args: 0,
        max_args: 1,
        form: "float(value)",
        summary: "Float from a number or a numeric string, as Python's `float()`",
    },
    BuiltinFn {
        name: "len",
        min_args: 1,
        max_args: 1,
        form: "len(value)",
        summary: "Length of a string (in characters), list or dict",
    },
];

/// The expression built-ins (`str`, `int`, `float`, `len`).
pub fn builtins() -> &'static [BuiltinFn] {
    BUILTINS
}

/// Look an expression built-in up by name.
pub fn builtin(name: &str) -> Option<&'static BuiltinFn> {
    BUILTINS.iter().find(|b| b.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = commands().iter().map(|c| c.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn target_returning_commands_end_with_a_target() {
        for c in commands().iter().filter(|c| c.returns == Returns::Target) {
            for form in c.forms {
                assert_eq!(form.last().map(|p| p.kind), Some(Target), "{}", c.name);
            }
        }
    }

    #[test]
    fn arity_range_counts_the_optional_target() {
        let get = command("RequestGet").unwrap();
        assert_eq!(get.arity_range(false), (4, 4));
        assert_eq!(get.arity_range(true), (3, 4));
        let random = command("randomString").unwrap();
        assert_eq!(random.arity_range(false), (2, 3));
        assert_eq!(random.arity_range(true), (1, 3));
    }
}
