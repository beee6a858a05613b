//! Capability policy: which command classes a deployment allows.

use std::collections::BTreeSet;

use avap_hostfns::Capability;

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

    /// Class by its config/metadata name.
    pub fn class_by_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn allowed(&self) -> impl Iterator<Item = Capability> + '_ {
        self.allowed.iter().copied()
    }
}
