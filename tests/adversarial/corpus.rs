//! Reading the hostile corpus: header fields and repetition directives
//! (format in README.md beside this file). Shared by `tests/adversarial.rs`
//! and `tests/server_survival.rs`.

use std::path::Path;

/// One attack, expanded.
#[derive(Debug, Clone)]
#[allow(dead_code)] // each test reads the fields it needs
pub struct Case {
    pub name: String,
    pub attack: String,
    /// `ok`, an error kind, or `CompileError E0xxx`.
    pub expect: String,
    /// The source line the error must point at, when the file says.
    pub line: Option<u64>,
    /// The `--limits` text.
    pub limits: String,
    pub memory_bytes: u64,
    pub time_ms: u64,
    pub script: String,
}

const DEFAULT_LIMITS: &str = "memory_mb=64,time_ms=2000";

/// Every `*.avap` in `tests/adversarial/`, by name.
pub fn load() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/adversarial");
    let mut cases: Vec<Case> = std::fs::read_dir(&dir)
        .expect("tests/adversarial")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "avap"))
        .map(|p| parse(&p))
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

fn parse(path: &Path) -> Case {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?").to_owned();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("// {key}: ")))
            .map(str::trim)
            .map(str::to_owned)
    };
    let expect = field("expect").unwrap_or_else(|| panic!("{name}: no `// expect:` line"));
    let attack = field("attack").unwrap_or_else(|| panic!("{name}: no `// attack:` line"));
    let mut limits = DEFAULT_LIMITS.to_owned();
    if let Some(extra) = field("limits") {
        limits = format!("{DEFAULT_LIMITS},{extra}");
    }
    let value = |key: &str, default: u64| {
        limits
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, v)| v.parse().ok())
            .next_back()
            .unwrap_or(default)
    };
    let memory_bytes = value("memory_mb", 64) << 20;
    let time_ms = value("time_ms", 2000);
    let line = field("line").map(|l| l.parse().unwrap_or_else(|_| panic!("{name}: bad `// line:`")));
    Case {
        script: expand(&text).unwrap_or_else(|e| panic!("{name}: {e}")),
        name,
        attack,
        expect,
        line,
        limits,
        memory_bytes,
        time_ms,
    }
}

/// Apply the `// repeat N [inline] [numbered]` … `// end` directives.
pub fn expand(text: &str) -> Result<String, String> {
    const START: &str = "// repeat ";
    const END: &str = "// end";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(START) {
        out.push_str(&rest[..at]);
        let after = &rest[at + START.len()..];
        let line_end = after.find('\n').ok_or("a repeat directive without a line break")?;
        let mut words = after[..line_end].split_whitespace();
        let count: usize = words
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or("a repeat directive without a count")?;
        let (mut inline, mut numbered) = (false, false);
        for w in words {
            match w {
                "inline" => inline = true,
                "numbered" => numbered = true,
                other => return Err(format!("unknown repeat option {other:?}")),
            }
        }
        let body_and_rest = &after[line_end + 1..];
        let end = body_and_rest.find(END).ok_or("a repeat directive without `// end`")?;
        let body = &body_and_rest[..end];
        let mut rest_after = &body_and_rest[end + END.len()..];
        if inline {
            rest_after = rest_after.strip_prefix('\n').unwrap_or(rest_after);
        } else {
            // `// end` is a line of its own: drop its line break too.
            rest_after = rest_after.strip_prefix('\n').unwrap_or(rest_after);
        }
        for n in 1..=count {
            if numbered {
                out.push_str(&body.replace("{n}", &n.to_string()));
            } else {
                out.push_str(body);
            }
        }
        rest = rest_after;
    }
    out.push_str(rest);
    Ok(out)
}
