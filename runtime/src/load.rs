//! A verified, compiled artifact ready to instantiate.

use avap_hostfns::Capability;
use avap_hostfns::artifact::{Meta, SourceMap, Verified};
use wasmtime::{InstancePre, Linker, Module};

use crate::error::LoadError;
use crate::policy::CapabilityPolicy;
use crate::state::RunState;

/// Refuse an artifact that imports a command of a denied class.
pub fn check_policy(meta: &Meta, policy: &CapabilityPolicy) -> Result<(), LoadError> {
    for import in &meta.imports {
        let allowed = CapabilityPolicy::class_by_name(&import.capability).is_some_and(|c| policy.allows(c));
        if !allowed {
            return Err(LoadError::CapabilityDenied {
                command: import.name.clone(),
                class: import.capability.clone(),
                line: import.line,
            });
        }
    }
    Ok(())
}

/// One artifact, compiled once, instantiated per run.
pub struct LoadedModule {
    pub(crate) pre: InstancePre<RunState>,
    pub verified: Verified,
    /// The capability classes its imports belong to, once each: what
    /// [`LoadedModule::allowed_by`] checks at every run.
    classes: Vec<Capability>,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("sha256", &self.verified.info.sha256)
            .finish_non_exhaustive()
    }
}

impl LoadedModule {
    pub(crate) fn new(linker: &Linker<RunState>, module: &Module, verified: Verified) -> Result<Self, LoadError> {
        let pre = linker
            .instantiate_pre(module)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let mut classes: Vec<Capability> = verified
            .info
            .meta
            .imports
            .iter()
            .filter_map(|import| CapabilityPolicy::class_by_name(&import.capability))
            .collect();
        classes.sort_unstable();
        classes.dedup();
        Ok(LoadedModule { pre, verified, classes })
    }

    /// Whether `policy` admits every command this module imports. Cheap
    /// enough for every run, so a module cached before the policy changed
    /// (a reload) is checked again; [`check_policy`] says which command is
    /// refused.
    pub fn allowed_by(&self, policy: &CapabilityPolicy) -> Result<(), LoadError> {
        if self.classes.iter().all(|class| policy.allows(*class)) {
            return Ok(());
        }
        check_policy(self.meta(), policy)
    }

    pub fn meta(&self) -> &Meta {
        &self.verified.info.meta
    }

    pub fn srcmap(&self) -> &SourceMap {
        &self.verified.info.srcmap
    }

    pub fn sha256(&self) -> &str {
        &self.verified.info.sha256
    }
}
