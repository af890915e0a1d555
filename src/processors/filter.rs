//! `filter`: drops metrics by name and resources by runtime.

use serde::Deserialize;

use super::Processor;
use crate::glob::Glob;
use crate::model::{AttrValue, Sweep, SweepContext};
use crate::semconv;

/// Drops metrics and containers before they are exported.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Metric names to drop; `*` matches any run of characters (`container.cpu.throttling_data.*`).
    #[serde(default)]
    pub exclude_metrics: Vec<Glob>,
    /// Container runtimes (`containerd`, `cri-o`, `docker`, `podman`) whose containers are dropped.
    #[serde(default)]
    pub exclude_runtimes: Vec<String>,
}

pub struct Filter {
    config: FilterConfig,
}

impl Filter {
    pub fn new(config: FilterConfig) -> Filter {
        Filter { config }
    }
}

impl Processor for Filter {
    fn process(&mut self, _ctx: &SweepContext, sweep: &mut Sweep) {
        if !self.config.exclude_runtimes.is_empty() {
            sweep.resources.retain(|r| match r.attribute(semconv::CONTAINER_RUNTIME_NAME) {
                Some(AttrValue::Str(rt)) => !self.config.exclude_runtimes.iter().any(|x| x == rt),
                _ => true,
            });
        }
        if !self.config.exclude_metrics.is_empty() {
            for r in &mut sweep.resources {
                r.points.retain(|p| !self.config.exclude_metrics.iter().any(|g| g.matches(p.metric.name)));
            }
            sweep.resources.retain(|r| !r.points.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, ResourceId, Value};
    use std::time::SystemTime;

    #[test]
    fn drops_excluded_metrics_and_runtimes_and_keeps_the_rest() {
        let mut sweep = Sweep::new(SystemTime::UNIX_EPOCH);
        for (id, rt) in [("a", "docker"), ("b", "podman")] {
            let r = sweep.resource_mut(ResourceId::Container(id.into()), || {
                vec![(semconv::CONTAINER_RUNTIME_NAME, rt.into())]
            });
            r.points.push(Point::new(&semconv::CONTAINER.cpu_time, Value::Double(1.0)));
            r.points.push(Point::new(&semconv::CONTAINER.cpu_throttling_periods, Value::Int(1)));
        }
        let mut filter = Filter::new(FilterConfig {
            exclude_metrics: vec![Glob::new("container.cpu.throttling_data.*")],
            exclude_runtimes: vec!["docker".into()],
        });
        filter.process(&SweepContext::new(sweep.time), &mut sweep);
        assert_eq!(sweep.resources.len(), 1);
        assert_eq!(sweep.resources[0].id, ResourceId::Container("b".into()));
        let names: Vec<_> = sweep.resources[0].points.iter().map(|p| p.metric.name).collect();
        assert_eq!(names, ["container.cpu.time"]);
    }
}
