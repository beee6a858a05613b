//! A verified, compiled artifact ready to instantiate.

use std::sync::{Arc, OnceLock};

use avap_hostfns::artifact::{Meta, SourceMap, Verified};
use avap_hostfns::{Capability, abi};
use wasmtime::{InstancePre, Linker, Module, ModuleExport};

use crate::error::LoadError;
use crate::policy::CapabilityPolicy;
use crate::recycle::{Recyclable, WarmPool};
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

/// Where a module keeps what every run sets up: its exports, found once
/// by name when the module is loaded (a run then reaches them by index),
/// and its string constants, read once out of the first run's pristine
/// memory (every run starts from the same data segments).
pub(crate) struct Layout {
    pub memory: Option<ModuleExport>,
    pub consts: Option<ModuleExport>,
    pub global_count: Option<ModuleExport>,
    pub gc_countdown: Option<ModuleExport>,
    pub stack_left: Option<ModuleExport>,
    pub main: Option<ModuleExport>,
    pub constants: OnceLock<Vec<String>>,
    /// The `global_count` export's value (immutable), read once.
    pub global_count_value: OnceLock<u32>,
}

impl Layout {
    fn of(module: &Module) -> Layout {
        Layout {
            memory: module.get_export_index(abi::EXPORT_MEMORY),
            consts: module.get_export_index(abi::EXPORT_CONSTS),
            global_count: module.get_export_index(abi::EXPORT_GLOBAL_COUNT),
            gc_countdown: module.get_export_index(abi::EXPORT_GC_COUNTDOWN),
            stack_left: module.get_export_index(abi::EXPORT_STACK_LEFT),
            main: module.get_export_index(abi::EXPORT_MAIN),
            constants: OnceLock::new(),
            global_count_value: OnceLock::new(),
        }
    }
}

/// One artifact, compiled once, instantiated per run.
pub struct LoadedModule {
    pub(crate) pre: InstancePre<RunState>,
    pub(crate) layout: Arc<Layout>,
    pub verified: Verified,
    /// Instances of finished runs, reset for the next ([`crate::recycle`]).
    pub(crate) warm: WarmPool,
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
    /// `wasm`: the bytes `module` was compiled from; `warm_total` and
    /// `warm_cap`: the runtime's idle instances and how many it may hold.
    pub(crate) fn new(
        linker: &Linker<RunState>,
        module: &Module,
        wasm: &[u8],
        verified: Verified,
        warm_total: Arc<std::sync::atomic::AtomicU32>,
        warm_cap: u32,
    ) -> Result<Self, LoadError> {
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
        let layout = Arc::new(Layout::of(module));
        let warm = WarmPool::new(Recyclable::of(wasm, module), &pre, &layout, warm_total, warm_cap);
        Ok(LoadedModule {
            pre,
            layout,
            verified,
            warm,
            classes,
        })
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
