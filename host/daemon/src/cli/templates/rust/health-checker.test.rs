//! Runs the built component in-process against a mocked host (evolve-plugin-testkit): fake HTTP
//! answers per host, the daemon's allow-list and limits. `build_plugin` builds it first.
#![allow(clippy::unwrap_used)]

use evolve_plugin_testkit::types::HealthStatus;
use evolve_plugin_testkit::{FakeHttp, FakeResponse, Kit, build_plugin, service};

fn kit(http: FakeHttp) -> Kit {
    let dir = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    Kit::builder(dir).http(http).load().unwrap()
}

#[test]
fn grades_by_status_code() {
    let kit = kit(FakeHttp::new()
        .route("up.test:80", FakeResponse::status(200))
        .route("lost.test:80", FakeResponse::status(404))
        .route("down.test:80", FakeResponse::status(503)));
    let status = |endpoint: &str| kit.check(service("svc", endpoint)).unwrap().unwrap().status;
    assert_eq!(status("http://up.test"), HealthStatus::Healthy);
    assert_eq!(status("http://lost.test"), HealthStatus::Degraded);
    assert_eq!(status("http://down.test"), HealthStatus::Unhealthy);
    assert_eq!(kit.http_requests()[0], "GET http://up.test/health");
}

#[test]
fn no_answer_is_unhealthy() {
    let kit = kit(FakeHttp::new().route("slow.test:80", FakeResponse::Timeout));
    let report = kit.check(service("svc", "http://slow.test")).unwrap().unwrap();
    assert_eq!(report.status, HealthStatus::Unhealthy);
    // No route at all: the connection is refused.
    let report = kit.check(service("svc", "http://gone.test")).unwrap().unwrap();
    assert_eq!(report.status, HealthStatus::Unhealthy);
}
