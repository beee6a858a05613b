//! Capability policy: which command classes a deployment allows.
//!
//! Every AVAP command belongs to exactly one [`Capability`] class
//! (`avap_hostfns::signature`). A deployment allows or denies whole classes;
//! an artifact that imports a command of a denied class is refused by
//! [`crate::Runtime::load`] before anything runs, with the command's name and
//! the first source line that uses it. What an *allowed* class may reach is
//! narrowed further per class by the deployment's own allowlists (the
//! outbound HTTP policy for `net` and `ai`, the configured databases and
//! named connectors for `db`); `avap audit` prints both.

use std::collections::BTreeSet;
use std::fmt;

use avap_hostfns::Capability;

/// Other spellings accepted for a class in config files and flags: the
/// language spec calls the random class `rand`.
const ALIASES: [(&str, Capability); 1] = [("rand", Capability::Random)];

/// Allowed capability classes. Artifacts importing a command of any other
/// class are refused at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityPolicy {
    allowed: BTreeSet<Capability>,
}

impl Default for CapabilityPolicy {
    fn default() -> Self {
        CapabilityPolicy::allow_all()
    }
}

/// A class name that is not a capability class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a capability class; the classes are {}", class_list())]
pub struct UnknownClass {
    pub name: String,
}

fn class_list() -> String {
    let names: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
    format!("{} (`rand` is accepted for `random`)", names.join(", "))
}

impl CapabilityPolicy {
    pub fn allow_all() -> Self {
        CapabilityPolicy {
            allowed: Capability::ALL.into_iter().collect(),
        }
    }

    pub fn only(classes: impl IntoIterator<Item = Capability>) -> Self {
        CapabilityPolicy {
            allowed: classes.into_iter().collect(),
        }
    }

    #[must_use]
    pub fn deny(mut self, class: Capability) -> Self {
        self.allowed.remove(&class);
        self
    }

    pub fn allows(&self, class: Capability) -> bool {
        self.allowed.contains(&class)
    }

    /// Class by its config/metadata name ([`Capability::as_str`]), or by an
    /// alias (`rand` for `random`). Exact, lowercase match.
    pub fn class_by_name(name: &str) -> Option<Capability> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .or_else(|| ALIASES.iter().find(|(alias, _)| *alias == name).map(|(_, c)| *c))
    }

    /// [`CapabilityPolicy::class_by_name`] with an error that lists the classes.
    pub fn parse_class(name: &str) -> Result<Capability, UnknownClass> {
        Self::class_by_name(name).ok_or_else(|| UnknownClass { name: name.to_owned() })
    }

    /// All classes except the named ones (config `deny_capabilities`, `--deny`).
    pub fn denying<I, S>(names: I) -> Result<Self, UnknownClass>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        names.into_iter().try_fold(Self::allow_all(), |policy, name| {
            Ok(policy.deny(Self::parse_class(name.as_ref())?))
        })
    }

    /// Allowed classes, in [`Capability::ALL`] order.
    pub fn allowed(&self) -> impl Iterator<Item = Capability> + '_ {
        self.allowed.iter().copied()
    }

    /// Denied classes, in [`Capability::ALL`] order.
    pub fn denied(&self) -> impl Iterator<Item = Capability> + '_ {
        Capability::ALL.into_iter().filter(|c| !self.allowed.contains(c))
    }
}

impl fmt::Display for CapabilityPolicy {
    /// `allow pure, request, …; deny net` (or `allow all`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |it: &mut dyn Iterator<Item = Capability>| it.map(Capability::as_str).collect::<Vec<_>>().join(", ");
        let denied = join(&mut self.denied());
        if denied.is_empty() {
            return f.write_str("allow all");
        }
        let allowed = join(&mut self.allowed());
        let allowed = if allowed.is_empty() { "none".to_owned() } else { allowed };
        write!(f, "allow {allowed}; deny {denied}")
    }
}

#[cfg(test)]
mod tests {
    use avap_codegen::check::NoIncludes;
    use avap_codegen::{SourceFile, check_file, compile};
    use avap_hostfns::artifact::SigningKey;

    use super::*;
    use crate::{LoadError, Runtime, RuntimeConfig};

    /// One script per class: line 2 is the only command of that class.
    const BY_CLASS: [(Capability, &str, &str); 8] = [
        (Capability::Pure, "getListLen", "getListLen(a, n)"),
        (Capability::Request, "addParam", "addParam(\"q\", q)"),
        (Capability::Clock, "getDateTime", "getDateTime(\"%Y\", 0, \"UTC\", t)"),
        (Capability::Random, "randomString", "randomString(\"[A-Z]\", 8, t)"),
        (
            Capability::Net,
            "RequestGet",
            "RequestGet(\"https://example.com/\", \"\", \"\", r)",
        ),
        (Capability::Db, "ormDirect", "ormDirect(\"SELECT 1\", rows)"),
        (Capability::Ai, "functionAI", "functionAI(\"hello\", answer)"),
        (Capability::Async, "gather", "g = gather(\"job\", 1)"),
    ];

    fn artifact(source: &str) -> Vec<u8> {
        let checked = check_file(SourceFile::new("policy.avap", source), &NoIncludes);
        assert_eq!(checked.error_count(), 0, "{source}: {:?}", checked.diagnostics);
        compile(&checked, None).bytes
    }

    fn runtime(policy: CapabilityPolicy) -> Runtime {
        Runtime::new(RuntimeConfig {
            allow_unsigned: true,
            max_concurrent_runs: 2,
            policy,
            ..RuntimeConfig::default()
        })
        .expect("runtime starts")
    }

    fn script(line: &str) -> String {
        // `addVar` is pure; a pure-denying policy refuses it first (line 1).
        format!("addVar(a, \"x\")\n{line}\n")
    }

    #[test]
    fn every_class_is_refused_at_load_with_command_class_and_line() {
        for (class, command, line) in BY_CLASS {
            let source = script(line);
            let bytes = artifact(&source);
            // Deny only this class (plus nothing else): the first import of
            // this class is named. `pure` also covers line 1's `addVar`.
            let rt = runtime(CapabilityPolicy::allow_all().deny(class));
            match rt.load(&bytes) {
                Err(LoadError::CapabilityDenied {
                    command: c,
                    class: k,
                    line: l,
                }) => {
                    assert_eq!(k, class.as_str(), "{source}");
                    if class == Capability::Pure {
                        assert_eq!((c.as_str(), l), ("addVar", 1), "{source}");
                    } else {
                        assert_eq!((c.as_str(), l), (command, 2), "{source}");
                    }
                }
                other => panic!("{source}: expected CapabilityDenied for {class:?}, got {other:?}"),
            }
            // The same artifact loads when the class is allowed.
            runtime(CapabilityPolicy::allow_all())
                .load(&bytes)
                .unwrap_or_else(|e| panic!("{source}: loads under allow-all: {e}"));
        }
    }

    #[test]
    fn the_refusal_message_names_command_line_and_class() {
        let bytes = artifact(&script("RequestPost(\"https://example.com/\", \"\", \"\", \"{}\", r)"));
        let err = runtime(CapabilityPolicy::denying(["net"]).unwrap())
            .load(&bytes)
            .expect_err("net is denied");
        let msg = err.to_string();
        assert!(
            msg.contains("`RequestPost` (line 2)") && msg.contains("`net` capability"),
            "{msg}"
        );
    }

    #[test]
    fn signed_artifacts_are_refused_too_and_other_classes_pass() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let checked = check_file(
            SourceFile::new("db.avap", "ormCheckTable(\"users\", ok)\naddResult(ok)\n"),
            &NoIncludes,
        );
        let bytes = compile(&checked, Some(&key)).bytes;
        let mut trusted = avap_hostfns::artifact::TrustedKeys::new();
        trusted.add(key.verifying_key());
        let rt = |policy| {
            Runtime::new(RuntimeConfig {
                trusted_keys: trusted.clone(),
                max_concurrent_runs: 2,
                policy,
                ..RuntimeConfig::default()
            })
            .unwrap()
        };
        assert!(matches!(
            rt(CapabilityPolicy::denying(["db"]).unwrap()).load(&bytes),
            Err(LoadError::CapabilityDenied { ref command, line: 1, .. }) if command == "ormCheckTable"
        ));
        rt(CapabilityPolicy::denying(["net", "ai", "rand", "async", "clock"]).unwrap())
            .load(&bytes)
            .expect("db and request are allowed");
    }

    #[test]
    fn rand_is_an_alias_of_random_and_unknown_names_are_errors() {
        assert_eq!(CapabilityPolicy::class_by_name("rand"), Some(Capability::Random));
        assert_eq!(CapabilityPolicy::class_by_name("random"), Some(Capability::Random));
        for class in Capability::ALL {
            assert_eq!(CapabilityPolicy::class_by_name(class.as_str()), Some(class));
        }
        assert_eq!(CapabilityPolicy::class_by_name("Net"), None);
        let err = CapabilityPolicy::denying(["net", "network"]).unwrap_err();
        assert_eq!(err.name, "network");
        assert!(
            err.to_string()
                .contains("the classes are pure, request, clock, random, net, db, ai, async"),
            "{err}"
        );
    }

    #[test]
    fn display_lists_allowed_and_denied() {
        assert_eq!(CapabilityPolicy::allow_all().to_string(), "allow all");
        let p = CapabilityPolicy::denying(["net", "db", "ai"]).unwrap();
        assert_eq!(
            p.to_string(),
            "allow pure, request, clock, random, async; deny net, db, ai"
        );
        assert_eq!(
            p.denied().collect::<Vec<_>>(),
            [Capability::Net, Capability::Db, Capability::Ai]
        );
        assert_eq!(
            CapabilityPolicy::only([]).to_string(),
            format!("allow none; deny {}", {
                Capability::ALL.map(Capability::as_str).join(", ")
            })
        );
    }
}
