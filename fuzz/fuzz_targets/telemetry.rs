//! Fuzz the collector's ingestion path: a telemetry batch parsed and validated like
//! `POST /v1/runs/{run}/events`, then fed to the detectors of one run.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(batch) = serde_json::from_slice::<tg_watch::Batch>(data) else { return };
    let Ok(thresholds) = tg_watch::Thresholds::default().check() else { return };
    let mut watch = tg_watch::RunWatch::new("fuzz", &thresholds);
    let mut now = 0.0;
    for event in &batch.events {
        if event.validate().is_ok() && event.run == "fuzz" {
            let _ = watch.observe(event, now);
            now += 1.0;
        }
    }
    let _ = watch.tick(now + 3600.0);
});
