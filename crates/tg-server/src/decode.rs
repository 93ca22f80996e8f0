//! Decoding one event's JSON, with a fast path for the common step event.
//!
//! [`Event`] flattens an internally tagged [`tg_watch::Body`], which serde can only decode by
//! first buffering every field into an intermediate tree and then decoding that again: about
//! half the decoding time of a step event. Step events are nearly all the traffic, so they are
//! first tried as one flat struct ([`FastStep`]) with exactly the step event's fields, the same
//! field types, and `deny_unknown_fields`. Whenever that fails for any reason (another event
//! type, a field it does not know, a non-finite `loss` sent as a string, a duplicate key, a
//! wrong type) the event is decoded by [`Event`]'s own `Deserialize`, which alone decides
//! what is accepted and what the error says. So the fast path can only succeed on input the
//! general path accepts, with the same result (checked by the tests below).

use serde::Deserialize;
use tg_watch::{Body, Event, RngHashes, SeedCall, Step, UpdateCheck};

/// A step event, flat. Field for field what `Event` + `Body::Step` read; struct literals below
/// list every field, so a field added to either fails to compile here rather than being dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastStep {
    run: String,
    rank: u32,
    world_size: u32,
    host: String,
    pid: u32,
    #[serde(default)]
    user: Option<String>,
    time_unix_s: f64,
    #[serde(rename = "type")]
    kind: StepTag,
    step: u64,
    wall_s: f64,
    #[serde(default)]
    device_s: Option<f64>,
    /// Numbers only: `"nan"`, `"inf"` and `"-inf"` take the general path.
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    update: Option<UpdateCheck>,
    #[serde(default)]
    param_fingerprint: Option<String>,
    #[serde(default)]
    update_fingerprint: Option<String>,
    #[serde(default)]
    replica_group: Option<String>,
    #[serde(default)]
    rng: Option<RngHashes>,
    #[serde(default)]
    seed_calls: Vec<SeedCall>,
}

/// The only `type` the fast path takes.
#[derive(Deserialize)]
enum StepTag {
    #[serde(rename = "step")]
    Step,
}

/// Decode one event from its JSON text.
pub(crate) fn event(text: &str) -> Result<Event, serde_json::Error> {
    // A derived struct also accepts a JSON array of its fields in order; `Event` (flattened)
    // does not, so only objects may take the fast path.
    if text.trim_start().starts_with('{')
        && let Ok(fast) = serde_json::from_str::<FastStep>(text)
    {
        let StepTag::Step = fast.kind;
        return Ok(Event {
            run: fast.run,
            rank: fast.rank,
            world_size: fast.world_size,
            host: fast.host,
            pid: fast.pid,
            user: fast.user,
            time_unix_s: fast.time_unix_s,
            body: Body::Step(Step {
                step: fast.step,
                wall_s: fast.wall_s,
                device_s: fast.device_s,
                loss: fast.loss,
                update: fast.update,
                param_fingerprint: fast.param_fingerprint,
                update_fingerprint: fast.update_fingerprint,
                replica_group: fast.replica_group,
                rng: fast.rng,
                seed_calls: fast.seed_calls,
            }),
        });
    }
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step event as `trainguard.watch` sends it, with every optional field.
    const FULL: &str = concat!(
        r#"{"run":"r-1","rank":3,"world_size":8,"host":"gpu-1","pid":42,"user":"alice","#,
        r#""time_unix_s":1764633601.5,"type":"step","step":100,"wall_s":0.412,"device_s":0.398,"#,
        r#""replica_group":"pp0","rng":{"python":"9f2c","torch_cuda":"77e0"},"#,
        r#""seed_calls":[{"api":"torch.manual_seed","seed":7,"stack":"x"}],"#,
        r#""param_fingerprint":"a3f0","update_fingerprint":"11bd","#,
        r#""update":{"dot":0.0123,"cosine":0.9999,"update_norm":0.81,"expected_norm":"nan"},"#,
        r#""loss":2.31}"#
    );

    fn takes_fast_path(text: &str) -> bool {
        text.trim_start().starts_with('{') && serde_json::from_str::<FastStep>(text).is_ok()
    }

    /// Whatever the input, `event` answers exactly what `Event`'s own decoder answers.
    fn same(text: &str) {
        let general = serde_json::from_str::<Event>(text);
        let ours = event(text);
        match (&general, &ours) {
            // Debug, not PartialEq: NaN (sent as "nan") must compare equal to itself.
            (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
            _ => panic!("{text}: general {general:?}, fast {ours:?}"),
        }
    }

    #[test]
    fn the_fast_path_takes_ordinary_steps() {
        let minimal = r#"{"type":"step","run":"r","rank":0,"world_size":1,"host":"h","pid":1,"time_unix_s":1,"step":1,"wall_s":1}"#;
        for text in [FULL, minimal] {
            assert!(takes_fast_path(text), "{text}");
            same(text);
        }
        let nulls = FULL
            .replace(r#""device_s":0.398"#, r#""device_s":null"#)
            .replace(r#""user":"alice""#, r#""user":null"#)
            .replace(r#""loss":2.31"#, r#""loss":null"#);
        assert!(takes_fast_path(&nulls));
        same(&nulls);
    }

    #[test]
    fn anything_unusual_is_decided_by_the_general_decoder() {
        let cases = [
            // Non-finite loss as a string, unknown and foreign fields, other types.
            FULL.replace(r#""loss":2.31"#, r#""loss":"nan""#),
            FULL.replace(r#""loss":2.31"#, r#""loss":"-Infinity""#),
            FULL.replace(r#""loss":2.31"#, r#""loss":"bogus""#),
            FULL.replace(r#""pid":42"#, r#""pid":42,"future_field":{"a":[1,2]}"#),
            FULL.replace(r#""pid":42"#, r#""pid":42,"seed":5,"argv":["x"]"#),
            FULL.replace(r#""type":"step""#, r#""type":"heartbeat""#),
            FULL.replace(r#""type":"step""#, r#""type":"process_exit""#),
            FULL.replace(r#""type":"step""#, r#""type":"Step""#),
            FULL.replace(r#""type":"step","#, ""),
            // Duplicates, escapes, wrong types, bounds.
            FULL.replace(r#""pid":42"#, r#""pid":42,"pid":43"#),
            FULL.replace(r#""step":100"#, r#""step":100,"step":101"#),
            FULL.replace(r#""type":"step""#, r#""type":"step","type":"step""#),
            FULL.replace(r#""run":"r-1""#, r#""r\u0075n":"r-1""#),
            FULL.replace(r#""host":"gpu-1""#, r#""host":"g\u00e9\n""#),
            FULL.replace(r#""rank":3"#, r#""rank":-3"#),
            FULL.replace(r#""rank":3"#, r#""rank":4294967296"#),
            FULL.replace(r#""rank":3"#, r#""rank":3.0"#),
            FULL.replace(r#""step":100"#, r#""step":1e2"#),
            FULL.replace(r#""wall_s":0.412"#, r#""wall_s":1"#),
            FULL.replace(r#""wall_s":0.412"#, r#""wall_s":"0.4""#),
            FULL.replace(r#""wall_s":0.412"#, r#""wall_s":1e400"#),
            FULL.replace(r#""device_s":0.398"#, r#""device_s":-7"#),
            FULL.replace(r#""update":{"#, r#""update":{"extra":1,"#),
            FULL.replace(
                r#""seed_calls":[{"api":"torch.manual_seed","seed":7,"stack":"x"}]"#,
                r#""seed_calls":null"#,
            ),
            FULL.replace(r#","wall_s":0.412"#, ""),
            FULL.replace(
                r#""rng":{"python":"9f2c","torch_cuda":"77e0"}"#,
                r#""rng":["9f2c"]"#,
            ),
            // Not an object: a derived struct alone would take its fields in order.
            r#"["r",0,1,"h",1,null,1.0,"step",1,0.5]"#.to_string(),
            format!("  \n{FULL}"),
            "{}".to_string(),
            "null".to_string(),
        ];
        for text in &cases {
            same(text);
        }
        // A non-finite loss takes the general path and still decodes.
        assert!(!takes_fast_path(&cases[0]));
        let Body::Step(step) = event(&cases[0]).unwrap().body else {
            panic!("not a step");
        };
        assert!(step.loss.is_some_and(f64::is_nan));
    }
}
