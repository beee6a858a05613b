//! Per-case outcomes and the two output forms (human lines, `--json`).

use std::io::Write;

use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The file stem (`hello_world` for `hello_world.expected.json`).
    pub name: String,
    pub case: String,
    pub verdict: Verdict,
    /// Why it failed or was skipped; information (fixtures used) otherwise.
    pub detail: String,
}

impl CaseOutcome {
    /// `PASS name/case`, `FAIL name/case: detail` or `SKIP name/case: detail`.
    pub fn line(&self) -> String {
        let id = format!("{}/{}", self.name, self.case);
        match self.verdict {
            Verdict::Pass => format!("PASS {id}"),
            Verdict::Fail => format!("FAIL {id}: {}", self.detail),
            Verdict::Skip => format!("SKIP {id}: {}", self.detail),
        }
    }
}

/// Counts of passed, failed and skipped cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Totals {
    pub fn of(outcomes: &[CaseOutcome]) -> Totals {
        let count = |v: Verdict| outcomes.iter().filter(|o| o.verdict == v).count();
        Totals {
            passed: count(Verdict::Pass),
            failed: count(Verdict::Fail),
            skipped: count(Verdict::Skip),
        }
    }

    pub fn line(self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// The `--json` document: `{"passed", "failed", "skipped", "cases": [...]}`.
pub fn json_summary(outcomes: &[CaseOutcome]) -> serde_json::Value {
    let totals = Totals::of(outcomes);
    let cases: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "case": o.case,
                "ok": o.verdict == Verdict::Pass,
                "skipped": o.verdict == Verdict::Skip,
                "detail": o.detail,
            })
        })
        .collect();
    json!({"passed": totals.passed, "failed": totals.failed, "skipped": totals.skipped, "cases": cases})
}

/// Where the human lines go: stdout, or stderr under `--json`.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub json: bool,
}

impl Printer {
    pub fn case(self, outcome: &CaseOutcome) {
        self.human(&outcome.line());
    }

    pub fn human(self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// The summary line, and under `--json` the document as the last line
    /// of stdout.
    pub fn finish(self, outcomes: &[CaseOutcome]) -> std::io::Result<()> {
        self.human(&Totals::of(outcomes).line());
        if self.json {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", json_summary(outcomes))?;
            out.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(case: &str, verdict: Verdict, detail: &str) -> CaseOutcome {
        CaseOutcome {
            name: "f".into(),
            case: case.into(),
            verdict,
            detail: detail.into(),
        }
    }

    #[test]
    fn lines_and_summary() {
        let all = [
            outcome("a", Verdict::Pass, "mock HTTP at 127.0.0.1:8081"),
            outcome("b", Verdict::Fail, "result.x: expected 1, got 2"),
            outcome("c", Verdict::Skip, "port taken"),
        ];
        assert_eq!(all[0].line(), "PASS f/a");
        assert_eq!(all[1].line(), "FAIL f/b: result.x: expected 1, got 2");
        assert_eq!(all[2].line(), "SKIP f/c: port taken");
        assert_eq!(Totals::of(&all).line(), "1 passed, 1 failed, 1 skipped");
        let doc = json_summary(&all);
        assert_eq!(doc["passed"], 1);
        assert_eq!(doc["failed"], 1);
        assert_eq!(doc["skipped"], 1);
        assert_eq!(
            doc["cases"][1],
            json!({"name": "f", "case": "b", "ok": false, "skipped": false, "detail": "result.x: expected 1, got 2"})
        );
        assert_eq!(doc["cases"][2]["skipped"], true);
        assert!(!doc.to_string().contains('\n'));
    }
}
