//! A large synthetic sweep for the tests that load an exporter: `containers` containers with
//! names and a pod, CPU by mode, three memory gauges and block I/O per device and direction.

use std::time::{Duration, SystemTime};

use podometer::model::{Attributes, Point, ResourceId, Sweep, Value};
use podometer::semconv::{self, CONTAINER};

/// `namespace`, when given, is every container's `k8s.namespace.name`.
pub fn synthetic(containers: u64, devices: &[&str], namespace: Option<&str>) -> Sweep {
    let t = SystemTime::now();
    let mut sweep = Sweep::new(t);
    for c in 0..containers {
        let id = format!("{:064x}", c * 7919 + 1);
        let r = sweep.resource_mut(ResourceId::Container(id.clone()), || {
            let mut attributes: Attributes = vec![
                (semconv::CONTAINER_ID, id.clone().into()),
                (semconv::CONTAINER_NAME, format!("app-{c}").into()),
                (semconv::K8S_POD_NAME, format!("web-{}", c / 3).into()),
            ];
            if let Some(ns) = namespace {
                attributes.push((semconv::K8S_NAMESPACE_NAME, ns.into()));
            }
            attributes
        });
        for mode in ["user", "system"] {
            let mut p =
                Point::new(&CONTAINER.cpu_time, Value::Double(c as f64)).with(semconv::CPU_MODE, mode);
            p.start_time = Some(t - Duration::from_secs(60));
            r.points.push(p);
        }
        for m in [&CONTAINER.memory_usage, &CONTAINER.memory_working_set, &CONTAINER.memory_rss] {
            r.points.push(Point::new(m, Value::Int(c as i64 * 4096)));
        }
        for dev in devices {
            for dir in ["read", "write"] {
                let mut p = Point::new(&CONTAINER.disk_io, Value::Int(c as i64))
                    .with(semconv::DISK_IO_DIRECTION, dir)
                    .with(semconv::SYSTEM_DEVICE, *dev);
                p.start_time = Some(t - Duration::from_secs(60));
                r.points.push(p);
            }
        }
    }
    sweep
}
