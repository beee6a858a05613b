//! The statement words (`if`, `startLoop`, `function`, …): how each is
//! written, what it does, and the snippet completion inserts. Commands and
//! built-ins come from the contract (`avap_hostfns::signature`); these are
//! syntax, so they live with the editor features (a test keeps the list
//! equal to the checker's `STATEMENT_WORDS`).

/// One statement word.
#[derive(Debug, Clone, Copy)]
pub struct Statement {
    pub name: &'static str,
    pub form: &'static str,
    pub summary: &'static str,
    /// LSP snippet syntax (`${1:x}` placeholders, `$0` the final cursor).
    pub snippet: &'static str,
}

pub static STATEMENTS: &[Statement] = &[
    Statement {
        name: "if",
        form: "if(lhs, rhs, comparator) … else() … end()",
        summary: "Run the block when `lhs comparator rhs` holds (`=`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`); `if(None, None, \"expr\")` tests an expression",
        snippet: "if(${1:lhs}, ${2:rhs}, ${3:\"==\"})\n$0\nend()",
    },
    Statement {
        name: "else",
        form: "else()",
        summary: "Start the part of an `if` block that runs when the condition does not hold",
        snippet: "else()",
    },
    Statement {
        name: "end",
        form: "end()",
        summary: "Close an `if`, `try` or `go_async` block",
        snippet: "end()",
    },
    Statement {
        name: "startLoop",
        form: "startLoop(var, from, to) … endLoop()",
        summary: "Run the block for `var` = `from` up to `to` inclusive, step 1",
        snippet: "startLoop(${1:i}, ${2:1}, ${3:10})\n$0\nendLoop()",
    },
    Statement {
        name: "endLoop",
        form: "endLoop()",
        summary: "Close a `startLoop` block",
        snippet: "endLoop()",
    },
    Statement {
        name: "try",
        form: "try() … exception(error) … end()",
        summary: "Run the block; a catchable error jumps to the `exception` part with its message in `error`",
        snippet: "try()\n$0\nexception(${1:error})\nend()",
    },
    Statement {
        name: "exception",
        form: "exception(error)",
        summary: "Start the handler of a `try` block; `error` receives the error message",
        snippet: "exception(${1:error})",
    },
    Statement {
        name: "function",
        form: "function name(params) { … }",
        summary: "Define a function; its parameters and the names it assigns are local",
        snippet: "function ${1:name}(${2}) {\n$0\n}",
    },
    Statement {
        name: "return",
        form: "return(value)",
        summary: "Leave the function, giving `value` (or `None`)",
        snippet: "return(${1})",
    },
    Statement {
        name: "go_async",
        form: "go_async(id) … end()",
        summary: "Run the block concurrently; `gather(id, timeoutSeconds)` waits for it",
        snippet: "go_async(${1:id})\n$0\nend()",
    },
    Statement {
        name: "include",
        form: "include(\"file.avap\")",
        summary: "Bring in the function definitions of another file (relative to this one) at compile time",
        snippet: "include(\"${1:file.avap}\")",
    },
    Statement {
        name: "import",
        form: "import(\"file.avap\")",
        summary: "The same as `include`",
        snippet: "import(\"${1:file.avap}\")",
    },
];

pub fn statement(name: &str) -> Option<&'static Statement> {
    STATEMENTS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use avap_codegen::check::STATEMENT_WORDS;

    use super::*;

    #[test]
    fn every_statement_word_is_documented() {
        let documented: Vec<&str> = STATEMENTS.iter().map(|s| s.name).collect();
        assert_eq!(documented, STATEMENT_WORDS);
    }
}
