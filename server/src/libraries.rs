//! Libraries on the server: `include("name")` of a stored script.
//!
//! Compiling is synchronous (a blocking thread of the compile pool) and
//! the registry is async, so includes are resolved first: [`resolve`]
//! parses the source for its include names, reads the current version of
//! each named stored script (and, breadth first, of what those include),
//! and the compiler then reads them from the [`Resolved`] map, a
//! [`SourceLoader`]. What was resolved goes into the artifact's signed
//! meta ([`LibraryMeta`]): a version is built against fixed library
//! versions, and a library update reaches it only by a rebuild.
//!
//! The checker does the rest as for files: a library contributes only its
//! function definitions (W0004 for anything else), a cycle is E0061 (a
//! library's identity is its name), nesting deeper than
//! [`MAX_INCLUDE_DEPTH`] is E0060, and so is a name with no stored script.

use std::collections::{BTreeMap, BTreeSet};

use avap_codegen::ast::StmtKind;
use avap_codegen::check::{IncludeError, LoadedSource, MAX_INCLUDE_DEPTH, SourceLoader};
use avap_codegen::{SourceFile, parse};
use avap_hostfns::artifact::LibraryMeta;

use crate::error::ApiError;
use crate::registry::valid_name;
use crate::store::Store;

/// Libraries one script may resolve, all nesting levels together: each is
/// a database read and up to `max_script_bytes` to check.
pub const MAX_LIBRARIES: usize = 64;

/// A stored script as a library: the current version when resolved.
#[derive(Debug, Clone)]
struct Library {
    version: i64,
    source: String,
    source_sha256: String,
}

/// Why an include name resolved to no library.
#[derive(Debug, Clone)]
enum Unresolved {
    /// No stored script of that name.
    NotStored,
    /// Past [`MAX_LIBRARIES`]: not read.
    TooMany,
}

/// The includes of one script, resolved against the registry: a
/// [`SourceLoader`] over the libraries read.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// The stored script being built (a library including it is a cycle);
    /// `None` for inline scripts.
    root: Option<String>,
    libraries: BTreeMap<String, Library>,
    unresolved: BTreeMap<String, Unresolved>,
    /// Set on an edge node, which mirrors artifacts, not sources.
    no_sources: Option<&'static str>,
}

impl Resolved {
    /// Nothing to include from: an edge node's inline scripts.
    pub fn without_sources(why: &'static str) -> Resolved {
        Resolved {
            no_sources: Some(why),
            ..Resolved::default()
        }
    }

    /// What the artifact's meta records: each library, by name.
    pub fn used(&self) -> Vec<LibraryMeta> {
        self.libraries
            .iter()
            .map(|(name, lib)| LibraryMeta {
                name: name.clone(),
                version: lib.version,
                source_sha256: lib.source_sha256.clone(),
            })
            .collect()
    }
}

/// The stored script `include(path)` names: the path itself, or without
/// its `.avap` (as written for the CLI), when that is a valid name.
pub fn library_name(path: &str) -> Option<&str> {
    let name = path.strip_suffix(".avap").unwrap_or(path);
    valid_name(name).then_some(name)
}

/// Identity of a stored script for the checker's cycle detection.
fn identity(name: &str) -> String {
    format!("stored script {name}")
}

/// The names `source` includes (at its top level; an include anywhere else
/// is E0063 when it is checked), in order. Only a source that mentions
/// `include`/`import` is parsed, so a script without them costs nothing.
pub fn include_names(source: &str) -> Vec<String> {
    if !source.contains("include") && !source.contains("import") {
        return Vec::new();
    }
    let (program, _) = parse(&SourceFile::new("include-scan.avap", source.to_owned()));
    program
        .body
        .iter()
        .filter_map(|s| match &s.kind {
            StmtKind::Include { path, .. } => library_name(path).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// Resolve the includes of `source` (the stored script `root`, or an inline
/// script) to the current versions of the stored scripts they name, and
/// theirs in turn, up to [`MAX_INCLUDE_DEPTH`] levels and [`MAX_LIBRARIES`]
/// libraries.
pub async fn resolve(store: &Store, root: Option<&str>, source: &str) -> Result<Resolved, ApiError> {
    let mut resolved = Resolved {
        root: root.map(str::to_owned),
        ..Resolved::default()
    };
    let mut seen: BTreeSet<String> = root.iter().map(|r| (*r).to_owned()).collect();
    let mut level = include_names(source);
    for _ in 0..MAX_INCLUDE_DEPTH {
        let mut next = Vec::new();
        for name in level {
            if !seen.insert(name.clone()) {
                continue;
            }
            if resolved.libraries.len() >= MAX_LIBRARIES {
                resolved.unresolved.insert(name, Unresolved::TooMany);
                continue;
            }
            match store.current(&name).await? {
                None => {
                    resolved.unresolved.insert(name, Unresolved::NotStored);
                }
                Some(current) => {
                    next.extend(include_names(&current.source));
                    resolved.libraries.insert(
                        name,
                        Library {
                            version: current.meta.version,
                            source: current.source,
                            source_sha256: current.meta.source_sha256,
                        },
                    );
                }
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(resolved)
}

impl SourceLoader for Resolved {
    fn load(&self, _from: &str, path: &str) -> Result<LoadedSource, IncludeError> {
        if let Some(why) = self.no_sources {
            return Err(IncludeError::with_help(
                format!("`{path}` cannot be included here: {why}"),
                "store the script in the registry and run it by name, or execute it on the registry node",
            ));
        }
        let Some(name) = library_name(path) else {
            return Err(IncludeError::with_help(
                format!("`{path}` is not a stored script's name"),
                "on the server `include` names a stored script: 1 to 64 of A-Z, a-z, 0-9, `_` and `-` (`.avap` may follow)",
            ));
        };
        if self.root.as_deref() == Some(name) {
            // The script being stored, met again: the checker reports the cycle.
            return Ok(LoadedSource {
                identity: identity(name),
                name: format!("{name}.avap"),
                text: String::new(),
            });
        }
        if let Some(lib) = self.libraries.get(name) {
            return Ok(LoadedSource {
                identity: identity(name),
                name: format!("{name}.avap"),
                text: lib.source.clone(),
            });
        }
        Err(match self.unresolved.get(name) {
            Some(Unresolved::TooMany) => IncludeError::with_help(
                format!("`{name}` is past the {MAX_LIBRARIES} libraries one script may include (all levels together)"),
                "merge small libraries into fewer stored scripts",
            ),
            // Not stored, or nested too deep to have been read.
            _ => IncludeError::with_help(
                format!("no stored script named `{name}`"),
                format!("store the library first (POST /api/v1/scripts with \"name\": \"{name}\"), then this script"),
            ),
        })
    }

    fn identity(&self, name: &str) -> String {
        self.root
            .as_deref()
            .map_or_else(|| format!("inline script {name}"), identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use avap_codegen::{Code, check_file};
    use std::fmt::Write as _;

    fn lib(version: i64, source: &str) -> Library {
        Library {
            version,
            source: source.to_owned(),
            source_sha256: String::new(),
        }
    }

    fn resolved(root: Option<&str>, libs: &[(&str, &str)]) -> Resolved {
        Resolved {
            root: root.map(str::to_owned),
            libraries: libs.iter().map(|(n, s)| ((*n).to_owned(), lib(1, s))).collect(),
            unresolved: BTreeMap::from([("gone".to_owned(), Unresolved::NotStored)]),
            no_sources: None,
        }
    }

    fn codes(source: &str, loader: &Resolved) -> Vec<Code> {
        let checked = check_file(SourceFile::new("main.avap", source.to_owned()), loader);
        checked.diagnostics.iter().map(|d| d.code).collect()
    }

    #[test]
    fn include_names_are_the_top_level_includes() {
        assert_eq!(
            include_names("include(\"a\")\nimport \"b.avap\"\ninclude(\"../x\")\naddResult(a)\n"),
            ["a", "b"]
        );
        assert!(include_names("addVar(x, 1)\naddResult(x)\n").is_empty());
    }

    #[test]
    fn nested_libraries_resolve_and_missing_ones_say_so() {
        let loader = resolved(
            None,
            &[
                ("outer", "include(\"inner\")\nfunction twice(x) { return(double(x)) }\n"),
                ("inner", "function double(x) { y = x * 2\nreturn(y) }\n"),
            ],
        );
        assert_eq!(codes("include(\"outer\")\nr = twice(2)\naddResult(r)\n", &loader), []);

        let checked = check_file(SourceFile::new("main.avap", "include(\"gone\")\n".to_owned()), &loader);
        let d = &checked.diagnostics[0];
        assert_eq!(d.code, Code::IncludeNotFound);
        assert!(
            d.notes.iter().any(|n| n.contains("no stored script named `gone`")),
            "{d:?}"
        );
    }

    #[test]
    fn cycles_through_the_stored_script_are_refused() {
        let loader = resolved(
            Some("app"),
            &[("helper", "include(\"app\")\nfunction f() { return(1) }\n")],
        );
        assert_eq!(codes("include(\"helper\")\n", &loader), [Code::IncludeCycle]);
        let loader = resolved(
            None,
            &[
                ("a", "include(\"b\")\nfunction f() { return(1) }\n"),
                ("b", "include(\"a\")\nfunction g() { return(2) }\n"),
            ],
        );
        assert_eq!(codes("include(\"a\")\n", &loader), [Code::IncludeCycle]);
    }

    #[test]
    fn top_level_statements_of_a_library_are_reported_as_in_the_cli() {
        let loader = resolved(None, &[("noisy", "addVar(x, 1)\nfunction f() { return(1) }\n")]);
        assert_eq!(codes("include(\"noisy\")\n", &loader), [Code::IncludeTopLevel]);
    }

    async fn put(store: &Store, name: &str, source: &str) {
        let version = crate::store::NewVersion {
            name,
            source,
            source_sha256: &format!("sha of {source}"),
            artifact: b"\0asm",
            artifact_sha256: &format!("artifact of {source}"),
            libraries: &[],
            action: "store",
            rebuilds: None,
        };
        let actor = crate::store::Actor {
            actor: "test".to_owned(),
            request_id: None,
        };
        store.put(&version, &actor).await.unwrap();
    }

    #[tokio::test]
    async fn resolving_reads_current_versions_level_by_level_within_bounds() {
        let store = Store::in_memory().await.unwrap();
        put(&store, "outer", "include(\"inner\")\nfunction f() { return(1) }\n").await;
        put(&store, "inner", "function g() { return(1) }\n").await;
        put(&store, "inner", "function g() { return(2) }\n").await;
        let resolved = resolve(&store, Some("app"), "include(\"outer\")\ninclude(\"gone\")\n")
            .await
            .unwrap();
        let used: Vec<(String, i64)> = resolved.used().into_iter().map(|l| (l.name, l.version)).collect();
        assert_eq!(used, [("inner".to_owned(), 2), ("outer".to_owned(), 1)]);
        assert!(matches!(resolved.unresolved.get("gone"), Some(Unresolved::NotStored)));

        // Past MAX_LIBRARIES, names are not read, and say why.
        let mut source = String::new();
        for i in 0..=MAX_LIBRARIES {
            put(
                &store,
                &format!("lib{i}"),
                &format!("function f{i}() {{ return({i}) }}\n"),
            )
            .await;
            writeln!(source, "include(\"lib{i}\")").unwrap();
        }
        let resolved = resolve(&store, None, &source).await.unwrap();
        assert_eq!(resolved.used().len(), MAX_LIBRARIES);
        let checked = check_file(SourceFile::new("main.avap", source), &resolved);
        let d = &checked.diagnostics[0];
        assert_eq!((d.code, checked.error_count()), (Code::IncludeNotFound, 1));
        assert!(d.notes[0].contains("past the 64 libraries"), "{d:?}");
    }

    #[test]
    fn edge_nodes_have_no_sources_to_include() {
        let loader = Resolved::without_sources("an edge node has no sources");
        assert_eq!(codes("include(\"a\")\n", &loader), [Code::IncludeNotFound]);
    }
}
