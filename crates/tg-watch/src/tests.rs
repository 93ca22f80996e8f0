//! Detector tests on synthetic streams: each attack is caught, and clean runs with realistic
//! noise raise nothing.

use crate::*;

/// splitmix64: a small deterministic generator, so every stream is reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn watch() -> RunWatch {
    RunWatch::new("run-1", &Thresholds::default().check().unwrap())
}

fn event(rank: u32, world: u32, body: Body) -> Event {
    Event {
        run: "run-1".into(),
        rank,
        world_size: world,
        host: format!("host-{}", rank / 8),
        pid: 1000 + rank,
        user: Some("alice".into()),
        time_unix_s: 1.0e9,
        body,
    }
}

/// One healthy step with realistic noise.
struct Sim {
    rng: Rng,
    world: u32,
    base_s: f64,
}

impl Sim {
    fn new(seed: u64, world: u32) -> Self {
        Sim {
            rng: Rng(seed),
            world,
            base_s: 0.3,
        }
    }

    fn step(&mut self, _rank: u32, n: u64) -> Step {
        let rng = &mut self.rng;
        // 3% Gaussian jitter; a benign hiccup (GC, page cache) on any rank 1 step in 1000;
        // a checkpoint every 250 steps slows every rank alike.
        let mut wall = self.base_s * (1.0 + 0.03 * rng.normal());
        if rng.uniform() < 0.001 {
            wall += 0.1 + 0.05 * rng.uniform();
        }
        if n.is_multiple_of(250) {
            wall += 0.8;
        }
        let device = wall * (0.94 + 0.01 * rng.uniform());
        let loss = 2.0 * (-(n as f64) / 3000.0).exp() + 0.5 + 0.03 * rng.normal();
        let fp = format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        Step {
            step: n,
            wall_s: wall,
            device_s: Some(device),
            loss: Some(loss),
            update: Some(UpdateCheck {
                dot: 1e-3,
                cosine: 0.995 + 0.004 * rng.uniform(),
                update_norm: Some(1.0 + 0.05 * rng.normal()),
                expected_norm: Some(1.0),
            }),
            param_fingerprint: Some(fp.clone()),
            update_fingerprint: Some(format!("{fp}aa")),
            replica_group: None,
            rng: Some(RngHashes {
                torch_cuda: Some(format!("{:08x}", n * 7)),
                ..RngHashes::default()
            }),
            seed_calls: Vec::new(),
        }
    }
}

/// Run `steps` steps on every rank, letting `tamper` edit each; returns every incident,
/// including those of a tick after every step.
fn run(
    w: &mut RunWatch,
    sim: &mut Sim,
    steps: u64,
    mut tamper: impl FnMut(u32, u64, &mut Step, &mut Rng),
) -> Vec<Incident> {
    let mut out = Vec::new();
    let mut now = 1.0e9;
    let mut side = Rng(99);
    for r in 0..sim.world {
        let start = ProcessStart {
            seed: Some(1234),
            ..ProcessStart::default()
        };
        out.extend(w.observe(&event(r, sim.world, Body::ProcessStart(start)), now));
    }
    for n in 1..=steps {
        now += sim.base_s;
        for r in 0..sim.world {
            let mut s = sim.step(r, n);
            tamper(r, n, &mut s, &mut side);
            out.extend(w.observe(&event(r, sim.world, Body::Step(s)), now));
        }
        out.extend(w.tick(now));
    }
    for r in 0..sim.world {
        let exit = ProcessExit {
            exit_code: Some(0),
            ..ProcessExit::default()
        };
        out.extend(w.observe(&event(r, sim.world, Body::ProcessExit(exit)), now));
    }
    out.extend(w.tick(now + 3600.0));
    out
}

fn only(incidents: &[Incident], detector: Detector) -> Vec<&Incident> {
    incidents
        .iter()
        .filter(|i| i.detector == detector)
        .collect()
}

#[test]
fn clean_runs_with_realistic_noise_raise_nothing() {
    for seed in 0..4 {
        for world in [2, 4, 16] {
            let mut w = watch();
            let mut sim = Sim::new(seed, world);
            let incidents = run(&mut w, &mut sim, 1500, |_, _, _, _| {});
            assert!(
                incidents.is_empty(),
                "seed {seed} world {world}: {:#?}",
                incidents.first()
            );
        }
    }
}

#[test]
fn rare_short_sleep_on_one_rank_is_caught_though_its_median_is_unchanged() {
    let mut w = watch();
    let mut sim = Sim::new(7, 4);
    // Rank 2 sleeps 200 ms in 1 step of 50 (host side: device time unchanged).
    let incidents = run(&mut w, &mut sim, 1000, |r, _, s, side| {
        if r == 2 && side.uniform() < 1.0 / 50.0 {
            s.wall_s += 0.2;
        }
    });
    let found = only(&incidents, Detector::Straggler);
    assert!(!found.is_empty(), "no straggler found");
    assert!(found.iter().all(|i| i.rank == Some(2)), "{found:#?}");
    assert_eq!(incidents.len(), found.len(), "{incidents:#?}");
    let ev = &found[0].evidence;
    assert_eq!(ev["kind"], "tail");
    assert!(
        ev["cause"].as_str().unwrap().starts_with("host side"),
        "{ev}"
    );
    // The median-based view sees nothing: rank 2's median is within 3% of its peers'.
    let ratio = ev["p50_s"].as_f64().unwrap() / ev["peer_p50_s"].as_f64().unwrap();
    assert!(ratio < 1.03, "median ratio {ratio}");
    assert_eq!(found[0].host.as_deref(), Some("host-0"));
}

#[test]
fn device_side_slowdown_is_attributed_to_the_device() {
    let mut w = watch();
    let mut sim = Sim::new(8, 4);
    let incidents = run(&mut w, &mut sim, 600, |r, _, s, side| {
        if r == 1 && side.uniform() < 1.0 / 20.0 {
            s.wall_s += 0.2;
            s.device_s = s.device_s.map(|d| d + 0.19);
        }
    });
    let found = only(&incidents, Detector::Straggler);
    assert!(!found.is_empty());
    assert!(
        found[0].evidence["cause"]
            .as_str()
            .unwrap()
            .starts_with("device side")
    );
}

#[test]
fn persistently_slow_rank_is_a_straggler_by_median() {
    let mut w = watch();
    let mut sim = Sim::new(9, 8);
    let incidents = run(&mut w, &mut sim, 300, |r, _, s, _| {
        if r == 5 {
            s.wall_s *= 1.4;
        }
    });
    let found = only(&incidents, Detector::Straggler);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].rank, Some(5));
}

#[test]
fn flipped_update_is_caught_and_debounced() {
    let mut w = watch();
    let mut sim = Sim::new(10, 4);
    let incidents = run(&mut w, &mut sim, 600, |r, n, s, _| {
        if r == 0
            && n >= 300
            && let Some(u) = &mut s.update
        {
            u.cosine = -u.cosine;
            u.dot = -u.dot;
        }
    });
    let found = only(&incidents, Detector::UpdateFlipped);
    // Steps 300..=600 on rank 0, reported at 300, 400, 500, 600.
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(found.iter().all(|i| i.rank == Some(0)));
    assert_eq!(found[0].step, Some(300));
    assert!(found[0].summary.contains("sign flip"));
    assert_eq!(found[1].evidence["suppressed_since_last"], 99);
}

#[test]
fn scaled_update_is_caught() {
    let mut w = watch();
    let mut sim = Sim::new(11, 2);
    let incidents = run(&mut w, &mut sim, 100, |r, n, s, _| {
        if r == 1
            && n == 50
            && let Some(u) = &mut s.update
        {
            u.update_norm = Some(5.0);
        }
    });
    let found = only(&incidents, Detector::UpdateScaled);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].rank, found[0].step), (Some(1), Some(50)));
    assert_eq!(incidents.len(), 1);
}

#[test]
fn diverged_replica_is_blamed_by_majority() {
    let mut w = watch();
    let mut sim = Sim::new(12, 4);
    let incidents = run(&mut w, &mut sim, 400, |r, n, s, _| {
        if r == 3 && n >= 200 {
            s.param_fingerprint = Some("deadbeef".into());
        }
    });
    let found = only(&incidents, Detector::ReplicaDivergence);
    assert_eq!(found.len(), 3, "{found:#?}"); // steps 200, 300, 400
    assert!(found.iter().all(|i| i.rank == Some(3)));
    assert_eq!(found[0].step, Some(200));
    assert_eq!(found[0].evidence["mismatches"][0]["got"], "deadbeef");
    assert_eq!(incidents.len(), 3);
}

#[test]
fn two_replicas_that_disagree_blame_nobody_in_particular() {
    let mut w = watch();
    let mut sim = Sim::new(13, 2);
    let incidents = run(&mut w, &mut sim, 50, |r, n, s, _| {
        if r == 1 && n == 10 {
            s.update_fingerprint = Some("0123".into());
        }
    });
    let found = only(&incidents, Detector::ReplicaDivergence);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].rank, found[0].step), (None, Some(10)));
}

#[test]
fn rng_divergence_within_a_group_only() {
    let mut w = watch();
    let mut sim = Sim::new(14, 4);
    // Two replica groups {0,1} and {2,3} with different RNG streams: fine. Rank 1 drifts at 30.
    let incidents = run(&mut w, &mut sim, 60, |r, n, s, _| {
        let group = if r < 2 { "pp0" } else { "pp1" };
        s.replica_group = Some(group.into());
        s.rng = Some(RngHashes {
            torch_cuda: Some(format!("{group}{n}").replace("pp", "a")),
            numpy: Some(if r == 1 && n >= 30 {
                "ff".into()
            } else {
                "ee".into()
            }),
            ..RngHashes::default()
        });
    });
    let found = only(&incidents, Detector::RngDivergence);
    assert_eq!(found.len(), 1, "{found:#?}");
    // Two members, no majority: the group is named, not a rank.
    assert_eq!(found[0].rank, None);
    assert_eq!(found[0].evidence["mismatches"][0]["field"], "rng.numpy");
    assert_eq!(found[0].evidence["mismatches"][0]["replica_group"], "pp0");
}

#[test]
fn seed_change_across_restart_and_reseed_are_caught() {
    let mut w = watch();
    let start = |seed| {
        Body::ProcessStart(ProcessStart {
            seed: Some(seed),
            ..ProcessStart::default()
        })
    };
    assert!(w.observe(&event(0, 2, start(42)), 0.0).is_empty());
    assert!(w.observe(&event(1, 2, start(42)), 0.0).is_empty());
    let restart = w.observe(&event(1, 2, start(43)), 1.0);
    assert_eq!(restart.len(), 1);
    assert_eq!(restart[0].detector, Detector::SeedChanged);
    assert_eq!(restart[0].evidence["expected_seed"], 42);
    let step = Step {
        step: 5,
        wall_s: 0.1,
        seed_calls: vec![SeedCall {
            api: "torch.manual_seed".into(),
            seed: Some(7),
            stack: Some("optim.py:12".into()),
        }],
        ..Step::default()
    };
    let reseed = w.observe(&event(0, 2, Body::Step(step)), 2.0);
    assert_eq!(reseed.len(), 1);
    assert_eq!(reseed[0].detector, Detector::Reseed);
    assert!(reseed[0].summary.contains("torch.manual_seed"));
}

#[test]
fn silent_rank_is_reported_once_and_exited_rank_never() {
    let mut w = watch();
    let hb = || Body::Heartbeat(Heartbeat { step: None });
    w.observe(&event(0, 2, hb()), 100.0);
    w.observe(&event(1, 2, hb()), 100.0);
    let exit = ProcessExit {
        exit_code: Some(0),
        ..ProcessExit::default()
    };
    w.observe(&event(1, 2, Body::ProcessExit(exit)), 101.0);
    // A late heartbeat of the process that exited does not revive rank 1.
    w.observe(&event(1, 2, hb()), 102.0);
    assert!(w.tick(110.0).is_empty());
    let missing = w.tick(116.0);
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].detector, Detector::HeartbeatMissing);
    assert_eq!(missing[0].rank, Some(0));
    assert!(w.tick(130.0).is_empty(), "reported once per silence");
    w.observe(&event(0, 2, hb()), 131.0);
    assert_eq!(w.tick(147.0).len(), 1, "a new silence is a new incident");
}

#[test]
fn heartbeating_rank_without_progress_is_stalled() {
    let mut w = watch();
    let step = Step {
        step: 1,
        wall_s: 0.5,
        ..Step::default()
    };
    w.observe(&event(0, 1, Body::Step(step)), 0.0);
    let mut found = Vec::new();
    for t in (5..=200).step_by(5) {
        w.observe(
            &event(0, 1, Body::Heartbeat(Heartbeat { step: Some(1) })),
            f64::from(t),
        );
        found.extend(w.tick(f64::from(t)));
    }
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].detector, Detector::Stalled);
}

#[test]
fn exits_are_attributed() {
    let mut w = watch();
    let kill = ProcessExit {
        signal: Some(9),
        ..ProcessExit::default()
    };
    let i = w.observe(&event(3, 4, Body::ProcessExit(kill)), 0.0);
    assert_eq!(i.len(), 1);
    assert_eq!(i[0].detector, Detector::Killed);
    assert!(i[0].summary.contains("SIGKILL"), "{}", i[0].summary);
    assert!(i[0].summary.contains("sender unknown"));

    let term = ProcessExit {
        signal: Some(15),
        forwarded_signal: Some(15),
        sender_pid: Some(777),
        sender_uid: Some(1001),
        ..ProcessExit::default()
    };
    let i = w.observe(&event(2, 4, Body::ProcessExit(term)), 0.0);
    assert!(
        i[0].summary.contains("pid 777 (uid 1001)"),
        "{}",
        i[0].summary
    );

    let failed = ProcessExit {
        exit_code: Some(3),
        ..ProcessExit::default()
    };
    let i = w.observe(&event(1, 4, Body::ProcessExit(failed)), 0.0);
    assert_eq!(i[0].detector, Detector::FailedExit);
    let ok = ProcessExit {
        exit_code: Some(0),
        ..ProcessExit::default()
    };
    assert!(
        w.observe(&event(0, 4, Body::ProcessExit(ok)), 0.0)
            .is_empty()
    );
}

#[test]
fn loss_spike_and_nan_are_caught() {
    let mut w = watch();
    let mut sim = Sim::new(15, 2);
    let incidents = run(&mut w, &mut sim, 500, |r, n, s, _| {
        if r == 0 && n == 300 {
            s.loss = s.loss.map(|l| l * 3.0);
        }
        if r == 1 && n == 400 {
            s.loss = Some(f64::NAN);
        }
    });
    let spikes = only(&incidents, Detector::LossSpike);
    assert_eq!(spikes.len(), 1, "{incidents:#?}");
    assert_eq!((spikes[0].rank, spikes[0].step), (Some(0), Some(300)));
    let nan = only(&incidents, Detector::LossNonFinite);
    assert_eq!((nan[0].rank, nan[0].step), (Some(1), Some(400)));
    assert_eq!(incidents.len(), 2);
}

#[test]
fn wire_format_round_trips_and_takes_python_nan() {
    let text = r#"{"events": [
      {"type": "step", "run": "llm-7b", "rank": 3, "world_size": 4, "host": "gpu-1", "pid": 42,
       "time_unix_s": 1.5, "step": 100, "wall_s": 0.4, "loss": "NaN",
       "update": {"dot": 1, "cosine": "-inf"}, "param_fingerprint": "A3F0", "future_field": 1},
      {"type": "process_exit", "run": "llm-7b", "rank": 3, "world_size": 4, "host": "gpu-1",
       "pid": 42, "time_unix_s": 2.0, "signal": 9}
    ]}"#;
    let batch: Batch = serde_json::from_str(text).unwrap();
    assert_eq!(batch.events.len(), 2);
    let Body::Step(step) = &batch.events[0].body else {
        panic!("not a step")
    };
    assert!(step.loss.unwrap().is_nan());
    assert_eq!(step.update.unwrap().cosine, f64::NEG_INFINITY);
    batch.events.iter().for_each(|e| e.validate().unwrap());
    let again: Batch = serde_json::from_str(&serde_json::to_string(&batch).unwrap()).unwrap();
    let Body::Step(step2) = &again.events[0].body else {
        panic!("not a step")
    };
    assert!(step2.loss.unwrap().is_nan());
    assert_eq!(again.events[1], batch.events[1]);
}

#[test]
fn validation_rejects_hostile_fields() {
    let mut e = event(0, 2, Body::Heartbeat(Heartbeat::default()));
    e.validate().unwrap();
    e.rank = 2;
    assert!(e.validate().is_err());
    e.rank = 0;
    e.run = "../etc".into();
    assert!(matches!(e.validate(), Err(EventError::BadRunId(_))));
    e.run = "ok".into();
    e.body = Body::Step(Step {
        wall_s: 0.1,
        param_fingerprint: Some("xyz".into()),
        ..Step::default()
    });
    assert!(e.validate().is_err());
    e.body = Body::Step(Step {
        wall_s: -1.0,
        ..Step::default()
    });
    assert!(e.validate().is_err());
}

#[test]
fn thresholds_out_of_range_are_refused() {
    let t = Thresholds {
        update_min_cosine: 2.0,
        ..Thresholds::default()
    };
    assert!(t.check().is_err());
    assert_eq!(signal_name(9), Some("SIGKILL"));
    assert_eq!(signal_name(0), None);
}

#[test]
fn rare_sleep_is_caught_above_the_256_rank_trigger() {
    // The incident's attack fired only on jobs above 256 GPUs: judge a 512-rank job.
    let mut w = watch();
    let mut sim = Sim::new(16, 512);
    let incidents = run(&mut w, &mut sim, 200, |r, _, s, side| {
        if r == 317 && side.uniform() < 1.0 / 20.0 {
            s.wall_s += 0.15;
        }
    });
    let found = only(&incidents, Detector::Straggler);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].rank, Some(317));
    assert_eq!(found[0].evidence["world_size"], 512);
    assert_eq!(
        incidents.len(),
        1,
        "{:#?}",
        &incidents[..incidents.len().min(3)]
    );
}

#[test]
fn thresholds_from_partial_json() {
    let t: Thresholds =
        serde_json::from_str(r#"{"heartbeat_timeout_s": 30, "loss_z": 6}"#).unwrap();
    assert_eq!(t.heartbeat_timeout_s, 30.0);
    assert_eq!(t.loss_z, 6.0);
    assert_eq!(t.timing_window, Thresholds::default().timing_window);
    assert!(serde_json::from_str::<Thresholds>(r#"{"no_such": 1}"#).is_err());
}
