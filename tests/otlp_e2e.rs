//! End to end against real receivers: VictoriaMetrics and rotel.
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use podometer::exporters::otlp::{OtlpExporter, OtlpExporterConfig};
use podometer::exporters::Exporter;
use podometer::model::{Point, ResourceId, Sweep, Value};
use podometer::semconv;
use support::receivers::{self, Rotel, VictoriaMetrics};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    if !(receivers::victoria_available() && receivers::rotel_available()) {
        return;
    }
    let vm = VictoriaMetrics::start();
    let rotel = Rotel::start(&vm);
    let now = SystemTime::now();
    let mut sweep = Sweep::new(now);
    let r = sweep
        .resource_mut(ResourceId::Container("abc".into()), || vec![(semconv::CONTAINER_ID, "abc".into())]);
    r.points.push(Point::new(&semconv::CONTAINER.memory_usage, Value::Int(4096)));
    let mut cpu =
        Point::new(&semconv::CONTAINER.cpu_time, Value::Double(1.25)).with(semconv::CPU_MODE, "user");
    cpu.start_time = Some(now - Duration::from_secs(5));
    r.points.push(cpu);
    for (variant, start) in [
        ("start5", Some(now - Duration::from_secs(5))),
        ("start5b", Some(now - Duration::from_secs(5))),
        ("nostart", None),
        ("startequal", Some(now)),
        ("start1ms", Some(now - Duration::from_millis(1))),
    ] {
        let c: OtlpExporterConfig = serde_saphyr::from_str(&format!(
            "protocol: http/protobuf\nendpoint: {}\ncompression: none",
            vm.otlp_url()
        ))
        .unwrap();
        let mut e = OtlpExporter::from_resolved(variant, c.resolve(|_| None).unwrap()).unwrap();
        let mut s = sweep.clone();
        s.resources[0].set_attribute(semconv::HOST_NAME, variant);
        s.resources[0].points[1].start_time = start;
        e.export(Arc::new(s)).await.unwrap();
        e.shutdown(Instant::now() + Duration::from_secs(5)).await.unwrap();
    }
    for ms in [100u64, 500, 1000, 2000, 3000, 5000] {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        eprintln!("after +{ms}ms: {}", vm.export(r#"{__name__!=""}"#).len());
    }
    eprintln!("{}", rotel.log());
    eprintln!("VM LOG {}", vm.log());
    panic!("probe");
}
