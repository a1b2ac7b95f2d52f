//! `clustd demo` end to end (what the README tells users to run): the story completes and
//! the one service-interval checker finds no two services at once.

use clustd_transport::TransportKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_its_story_without_overlapping_masters() {
    let report = clustd::demo::run(TransportKind::Quic)
        .await
        .expect("the demo completes");
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    // First master, the failover's, and the step-down's: three service intervals at least.
    assert!(report.service_intervals >= 3, "{report:?}");
    assert!(report.elections >= 3, "{report:?}");
}
