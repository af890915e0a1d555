//! When each resource's network series began: the origin given to [`crate::model::StartTimes`],
//! so that a pod whose sandbox namespace is replaced starts new series instead of continuing
//! the old ones.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use tracing::debug;

use super::pids::NsKey;
use crate::agent_counters::Telemetry;
use crate::model::ResourceId;

/// The namespace each resource's network series come from and when the source first saw it
/// there; a resource not reported in a sweep is forgotten at its end.
#[derive(Default)]
pub(super) struct Origins {
    by_resource: HashMap<ResourceId, (NsKey, SystemTime)>,
    /// The resources reported this sweep.
    touched: HashSet<ResourceId>,
}

impl Origins {
    /// The origin of a resource's network series: when this source first saw the resource in
    /// namespace `key`. A resource seen in another namespace than last sweep gets a new origin,
    /// counted in `netns_replaced`.
    pub(super) fn note(&mut self, id: &ResourceId, key: NsKey, now: SystemTime) -> SystemTime {
        self.touched.insert(id.clone());
        match self.by_resource.get_mut(id) {
            Some((k, since)) if *k == key => *since,
            Some(entry) => {
                Telemetry::inc(&Telemetry::global().netns_replaced);
                debug!(resource = ?id, "New network namespace (sandbox replaced); its network series start anew.");
                *entry = (key, now);
                now
            }
            None => {
                self.by_resource.insert(id.clone(), (key, now));
                now
            }
        }
    }

    /// Forgets the resources not reported since the last call.
    pub(super) fn end_sweep(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        self.by_resource.retain(|id, _| touched.contains(id));
    }
}
