//! `avap conformance DIR`: run a directory of `NAME.avap` programs against
//! their `NAME.expected.json` cases and report pass, fail or skip per case
//! with a readable diff (format: the conformance corpus README).
//!
//! Cases run one after another: fixture ports are fixed by the files.

mod case;
mod compare;
mod fixtures;
mod http_client;
mod remote;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use avap_hostfns::artifact::TrustedKeys;
use avap_runtime::CapabilityPolicy;

use avap_server::exec::{Executor, Prepared};
use case::{Case, CaseFile, Fixtures};
pub use case::{RequestSpec, build_request};
use compare::{compare, error_message, error_summary};
use fixtures::SetupError;
use http_client::BaseUrl;
use report::Printer;
pub use report::{CaseOutcome, Totals, Verdict};

/// The marker in error messages of commands this build does not provide.
const NOT_AVAILABLE: &str = "command not available yet";

/// Suffix of case files.
const CASE_SUFFIX: &str = ".expected.json";

/// What `avap conformance` was asked to do (the CLI parses the flags).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Directory of NAME.avap programs with their NAME.expected.json cases.
    pub dir: PathBuf,
    /// Case lines to stderr and one JSON summary as the last line of stdout.
    pub json: bool,
    /// Only the cases whose `name/case` contains this text.
    pub filter: Option<String>,
    /// Every case through a running `avap serve` instead of in-process.
    pub server: Option<String>,
}

/// Where the cases run.
enum Target {
    /// In this process.
    Local(Box<Executor>),
    /// Through a running server's execute endpoint.
    Server(BaseUrl),
}

/// Runs the cases; exit status 0 only when none failed. A missing
/// directory, or no case to run, is an error.
pub fn conformance(args: &Options) -> Result<ExitCode> {
    let outcomes = run_dir_on(
        &args.dir,
        args.filter.as_deref(),
        Printer { json: args.json },
        args.server.as_deref(),
    )?;
    Printer { json: args.json }.finish(&outcomes)?;
    Ok(if Totals::of(&outcomes).failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs every selected case of `dir`, printing each outcome as it comes.
#[cfg(test)]
pub fn run_dir(dir: &Path, filter: Option<&str>, printer: Printer) -> Result<Vec<CaseOutcome>> {
    run_dir_on(dir, filter, printer, None)
}

/// [`run_dir`], in-process or, given a server URL, through its execute endpoint.
pub fn run_dir_on(
    dir: &Path,
    filter: Option<&str>,
    printer: Printer,
    server: Option<&str>,
) -> Result<Vec<CaseOutcome>> {
    let server = server.map(BaseUrl::parse).transpose().map_err(anyhow::Error::msg)?;
    let units = plan(load_dir(dir)?, filter);
    let total: usize = units.iter().map(Unit::len).sum();
    if total == 0 {
        match filter {
            Some(f) => bail!("no conformance case in {} matches --filter {f:?}", dir.display()),
            None => bail!(
                "no conformance cases in {}: every NAME.expected.json lists no case",
                dir.display()
            ),
        }
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The mock upstream servers get their own runtime, so a script run that
    // blocks a worker can never starve the server it is waiting for.
    let mock_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("avap-conformance-mock")
        .enable_all()
        .build()
        .context("cannot start the mock server runtime")?;
    let target = match server {
        Some(base) => Target::Server(base),
        None => Target::Local(Box::new(Executor::new(
            TrustedKeys::new(),
            false,
            CapabilityPolicy::allow_all(),
        )?)),
    };
    let mut outcomes = Vec::with_capacity(total);
    runtime.block_on(async {
        for unit in &units {
            run_unit(&target, unit, mock_rt.handle(), printer, &mut outcomes).await;
        }
    });
    drop(target);
    mock_rt.shutdown_background();
    Ok(outcomes)
}

/// One case file as read from disk.
#[derive(Debug)]
struct Entry {
    /// File stem: `NAME` of `NAME.expected.json`.
    name: String,
    parsed: Result<CaseFile, String>,
}

/// The `*.expected.json` files of `dir`, sorted by name.
fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, Entry)>> {
    if !dir.is_dir() {
        bail!(
            "conformance directory {} does not exist or is not a directory",
            dir.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(CASE_SUFFIX))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "no conformance cases in {}: expected NAME{CASE_SUFFIX} files next to their NAME.avap programs",
            dir.display()
        );
    }
    Ok(files
        .into_iter()
        .map(|path| {
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let name = file_name.strip_suffix(CASE_SUFFIX).unwrap_or(&file_name).to_string();
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| {
                    serde_json::from_str::<CaseFile>(&text).map_err(|e| format!("malformed {file_name}: {e}"))
                });
            (path, Entry { name, parsed })
        })
        .collect())
}

/// What to run from one file.
#[derive(Debug)]
enum Unit {
    /// The file could not be read or parsed: one failing entry.
    Malformed { name: String, detail: String },
    Cases {
        name: String,
        program: PathBuf,
        file: Box<CaseFile>,
        selected: Vec<usize>,
    },
}

impl Unit {
    fn len(&self) -> usize {
        match self {
            Unit::Malformed { .. } => 1,
            Unit::Cases { selected, .. } => selected.len(),
        }
    }
}

/// The label of case `i`: its `name`, or `case<N>` when it has none.
fn case_name(case: &Case, i: usize) -> String {
    case.name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("case{}", i + 1))
}

/// Label used for a file that could not be parsed.
const FILE_CASE: &str = "(file)";

fn plan(entries: Vec<(PathBuf, Entry)>, filter: Option<&str>) -> Vec<Unit> {
    let wanted = |name: &str, case: &str| filter.is_none_or(|f| format!("{name}/{case}").contains(f));
    entries
        .into_iter()
        .filter_map(|(path, entry)| match entry.parsed {
            Err(detail) => wanted(&entry.name, FILE_CASE).then_some(Unit::Malformed {
                name: entry.name,
                detail,
            }),
            Ok(file) => {
                let selected: Vec<usize> = (0..file.cases.len())
                    .filter(|&i| wanted(&entry.name, &case_name(&file.cases[i], i)))
                    .collect();
                if selected.is_empty() {
                    return None;
                }
                let dir = path.parent().unwrap_or(Path::new("."));
                let program = dir.join(file.program.clone().unwrap_or_else(|| format!("{}.avap", entry.name)));
                Some(Unit::Cases {
                    name: entry.name,
                    program,
                    file: Box::new(file),
                    selected,
                })
            }
        })
        .collect()
}

/// Compile the program once, then run each selected case.
async fn run_unit(
    target: &Target,
    unit: &Unit,
    mock_rt: &tokio::runtime::Handle,
    printer: Printer,
    outcomes: &mut Vec<CaseOutcome>,
) {
    let (name, program, file, selected) = match unit {
        Unit::Malformed { name, detail } => {
            let outcome = CaseOutcome {
                name: name.clone(),
                case: FILE_CASE.to_string(),
                verdict: Verdict::Fail,
                detail: detail.clone(),
            };
            printer.case(&outcome);
            outcomes.push(outcome);
            return;
        }
        Unit::Cases {
            name,
            program,
            file,
            selected,
        } => (name, program, file, selected),
    };
    let prepared = match target {
        Target::Local(executor) => executor.prepare(program).map(Program::Local),
        Target::Server(_) => std::fs::read_to_string(program)
            .with_context(|| format!("cannot read {}", program.display()))
            .map(Program::Source),
    };
    for &i in selected {
        let case = &file.cases[i];
        let (verdict, detail) = match &prepared {
            Ok(prepared) => run_case(target, prepared, file, case, mock_rt).await,
            Err(e) => (
                Verdict::Fail,
                format!("cannot compile or load {}: {e:#}", program.display()),
            ),
        };
        let outcome = CaseOutcome {
            name: name.clone(),
            case: case_name(case, i),
            verdict,
            detail,
        };
        printer.case(&outcome);
        outcomes.push(outcome);
    }
}

/// A program ready to run: compiled here, or its source for the server.
enum Program {
    Local(Prepared),
    Source(String),
}

/// What a case sends: a request for a local run, an execute body for the server.
enum Run {
    Local(avap_hostfns::Request),
    Server(serde_json::Value),
}

/// Set up the fixtures, run, tear down, compare.
async fn run_case(
    target: &Target,
    prepared: &Program,
    file: &CaseFile,
    case: &Case,
    mock_rt: &tokio::runtime::Handle,
) -> (Verdict, String) {
    let run = match prepared {
        Program::Local(_) => match build_request(case.request.as_ref()) {
            Ok(r) => Run::Local(r),
            Err(e) => return (Verdict::Fail, e),
        },
        Program::Source(source) => match remote::execute_body(source, case.request.as_ref()) {
            Ok(body) => Run::Server(body),
            Err((verdict, why)) => return (verdict, why),
        },
    };
    let fixtures = Fixtures::merged(file.fixtures.as_ref(), case.fixtures.as_ref());
    let active = match fixtures::setup(&fixtures, mock_rt).await {
        Ok(active) => active,
        Err(SetupError::Skip(why)) => return (Verdict::Skip, why),
        Err(SetupError::Fail(why)) => return (Verdict::Fail, format!("fixture: {why}")),
    };
    let (http_status, envelope) = match (target, prepared, run) {
        (Target::Local(executor), Program::Local(prepared), Run::Local(request)) => {
            let report = match prepared {
                Prepared::Module(module) => match active.env.effects() {
                    Ok(effects) => executor.run_with(module, request, &active.env.settings, &effects).await,
                    Err(why) => {
                        drop(active.finish().await);
                        return (Verdict::Fail, format!("fixture: {why}"));
                    }
                },
                Prepared::CompileError(report) => avap_runtime::RunReport::clone(report),
            };
            (report.http_status, report.envelope.json().clone())
        }
        (Target::Server(base), _, Run::Server(body)) => {
            if active.env.settings.time_zone.is_some() || active.env.settings.now.is_some() {
                drop(active.finish().await);
                return (
                    Verdict::Skip,
                    "the execute API has no clock or time zone setting (the case has a clock or tz fixture)"
                        .to_string(),
                );
            }
            let base = base.clone();
            let posted = tokio::task::spawn_blocking(move || remote::execute(&base, &body)).await;
            match posted {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    drop(active.finish().await);
                    return (Verdict::Fail, format!("server: {e}"));
                }
                Err(e) => {
                    drop(active.finish().await);
                    return (Verdict::Fail, format!("server: the request task failed: {e}"));
                }
            }
        }
        _ => unreachable!("the program and the request are built for the target"),
    };
    let fixtures_used = active.env.describe();
    let finished = active.finish().await;

    let mut problems = compare(&case.expected, http_status, &envelope);
    problems.extend(finished.problems);
    let mut notes = finished.notes;
    if !fixtures_used.is_empty() {
        notes.push(format!("fixtures: {fixtures_used}"));
    }
    if problems.is_empty() {
        return (Verdict::Pass, notes.join("; "));
    }
    if let Some(summary) = error_summary(&envelope)
        && !problems.iter().any(|p| p.contains(&summary))
    {
        problems.push(format!("the run failed: {summary}"));
    }
    problems.extend(notes);
    let mut detail = problems.join("; ");
    if error_message(&envelope).is_some_and(|m| m.contains(NOT_AVAILABLE)) {
        detail = format!("{NOT_AVAILABLE} — {detail}");
    }
    (Verdict::Fail, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("avap-conformance-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    const HELLO: &str = "addVar(greeting, 'Hello')\naddResult(greeting)\n";

    #[test]
    fn runs_a_directory() {
        let dir = corpus(
            "run",
            &[
                ("hello.avap", HELLO),
                (
                    "hello.expected.json",
                    r#"{"program": "hello.avap", "notes": "x", "cases": [
                        {"name": "ok", "expected": {"http_status": 200, "result": {"greeting": "Hello"}}},
                        {"name": "wrong", "expected": {"http_status": [201, 202], "result": {"greeting": "Bye"}}},
                        {"name": "tz", "fixtures": {"tz": "Nowhere/Land"}, "expected": {}}
                    ]}"#,
                ),
                ("broken.avap", "if(x, 1, =)\n"),
                (
                    "broken.expected.json",
                    r#"{"program": "broken.avap", "cases": [
                        {"name": "compile", "expected": {"http_status": 400, "error": {"kind": "CompileError", "line": 1}}}
                    ]}"#,
                ),
                (
                    "bad.expected.json",
                    r#"{"program": "bad.avap", "cases": [ {"name": 1} ]"#,
                ),
                (
                    "gone.expected.json",
                    r#"{"program": "gone.avap", "cases": [{"name": "x", "expected": {}}]}"#,
                ),
            ],
        );
        let outcomes = run_dir(&dir, None, Printer { json: true }).unwrap();
        let got: Vec<(String, Verdict)> = outcomes
            .iter()
            .map(|o| (format!("{}/{}", o.name, o.case), o.verdict))
            .collect();
        assert_eq!(
            got,
            [
                ("bad/(file)".to_string(), Verdict::Fail),
                ("broken/compile".to_string(), Verdict::Pass),
                ("gone/x".to_string(), Verdict::Fail),
                ("hello/ok".to_string(), Verdict::Pass),
                ("hello/wrong".to_string(), Verdict::Fail),
                ("hello/tz".to_string(), Verdict::Fail),
            ]
        );
        assert!(
            outcomes[0].detail.starts_with("malformed bad.expected.json: "),
            "{}",
            outcomes[0].detail
        );
        assert!(
            outcomes[2].detail.contains("cannot compile or load"),
            "{}",
            outcomes[2].detail
        );
        assert_eq!(
            outcomes[4].detail,
            "http_status: expected one of 201, 202, got 200; result.greeting: expected \"Bye\", got \"Hello\""
        );
        assert!(outcomes[5].detail.contains("Nowhere/Land"), "{}", outcomes[5].detail);

        let only = run_dir(&dir, Some("hello/w"), Printer { json: true }).unwrap();
        assert_eq!(only.len(), 1);
        assert!(run_dir(&dir, Some("nothing-matches"), Printer { json: true }).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_or_empty_directory_is_an_error() {
        let missing = std::env::temp_dir().join("avap-conformance-unit-does-not-exist");
        let e = run_dir(&missing, None, Printer { json: true }).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let empty = corpus("empty", &[]);
        let e = run_dir(&empty, None, Printer { json: true }).unwrap_err();
        assert!(e.to_string().contains("no conformance cases"), "{e}");
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn failing_run_mentions_error_and_unavailable_commands() {
        let dir = corpus(
            "unavailable",
            &[
                (
                    "http.avap",
                    "RequestGet('http://127.0.0.1:9/x', '', '', res)\naddResult(res)\n",
                ),
                (
                    "http.expected.json",
                    r#"{"cases": [{"name": "default", "expected": {"result": {"res": 1}}}]}"#,
                ),
            ],
        );
        let outcomes = run_dir(&dir, None, Printer { json: true }).unwrap();
        assert_eq!(outcomes[0].verdict, Verdict::Fail);
        let d = &outcomes[0].detail;
        // Whatever this build does with RequestGet, the detail explains it.
        assert!(d.contains("result"), "{d}");
        if d.contains(NOT_AVAILABLE) {
            assert!(d.starts_with(NOT_AVAILABLE), "{d}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
