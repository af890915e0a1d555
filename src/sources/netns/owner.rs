//! Where a namespace's series go: the pod of its members, else the member that owns it (the
//! one whose oldest process started first: the sandbox or infra container, which made it).

use std::collections::HashSet;

use tracing::debug;

use super::pids::CachedPid;
use crate::model::{Attributes, ContainerInfo, PodRef, ResourceId};
use crate::semconv::{self, NetworkFamily};

/// One member of a namespace group this sweep.
pub(super) struct Member<'a> {
    pub(super) container: &'a ContainerInfo,
    pub(super) pid: CachedPid,
}

/// Chooses the member that owns a namespace: the one whose oldest process started first,
/// ties to the smallest id. Returns an index into `members`.
pub(super) fn choose_owner(members: &[(&str, u64)]) -> Option<usize> {
    members.iter().enumerate().min_by(|(_, a), (_, b)| a.1.cmp(&b.1).then(a.0.cmp(b.0))).map(|(i, _)| i)
}

/// The Kubernetes pod of a namespace's members, if any; the smallest uid if they disagree.
pub(super) fn kubernetes_pod<'a>(members: &'a [Member<'_>]) -> Option<(&'a str, &'a str)> {
    members
        .iter()
        .filter_map(|m| match &m.container.pod {
            Some(PodRef::Kubernetes { uid, qos }) => Some((uid.as_str(), qos.as_str())),
            _ => None,
        })
        .min()
}

/// Where a namespace's series go: the resource, its attributes if it is new, the metric family.
pub(super) struct Target<'m, 'c> {
    pub(super) owner: &'m Member<'c>,
    pub(super) id: ResourceId,
    pub(super) attributes: Attributes,
    pub(super) family: &'static NetworkFamily,
}

/// The pod of a namespace's members if any (`k8s.pod.network.*` on the pod), else the owner
/// container (`container.network.*`). `owner` indexes `members` (chosen by [`choose_owner`]
/// and found alive by the caller). `None` when the pod was already reported this sweep from an
/// older namespace (its sandbox being replaced).
pub(super) fn target<'m, 'c>(
    members: &'m [Member<'c>],
    owner: usize,
    pods_done: &mut HashSet<String>,
) -> Option<Target<'m, 'c>> {
    let owner = &members[owner];
    Some(match kubernetes_pod(members) {
        Some((uid, qos)) => {
            if !pods_done.insert(uid.to_owned()) {
                debug!(pod_uid = uid, "Pod spans two network namespaces this sweep; reporting the first.");
                return None;
            }
            Target {
                owner,
                id: ResourceId::Pod(uid.to_owned()),
                attributes: crate::resource::pod(uid, qos),
                family: &semconv::POD_NETWORK,
            }
        }
        None => container_target(owner),
    })
}

/// `container.network.*` on `owner`'s container.
pub(super) fn container_target<'m, 'c>(owner: &'m Member<'c>) -> Target<'m, 'c> {
    Target {
        owner,
        id: owner.container.resource_id(),
        attributes: crate::resource::container(
            &owner.container.id,
            owner.container.runtime,
            owner.container.pod.as_ref(),
        ),
        family: &semconv::CONTAINER_NETWORK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_member_whose_oldest_process_started_first_ties_to_smallest_id() {
        assert_eq!(choose_owner(&[("b", 300), ("a", 200), ("c", 100)]), Some(2));
        assert_eq!(choose_owner(&[("b", 100), ("a", 100), ("c", 50), ("0", 50)]), Some(3));
        assert_eq!(choose_owner(&[]), None);
    }
}
