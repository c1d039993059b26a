//! The fedprompt client app on Flower messages: train and evaluate replies in the shape
//! Flower's stock strategies need, the round's seed and settings passed on, and clear error
//! replies for what it cannot do (query, no model description, malformed arrays).

use fedprompt_fl::ConfigValue;
use fedprompt_flower::app::{client_config, metric, params_from_arrays, FedpromptApp, SPEC_KEY};
use fedprompt_flower::node::MessageHandler;
use fedprompt_flower::proto::{self, config_record_value::Value as Cv};
use fedprompt_flower::records::{Array, ArrayRecord, Message, Record, RecordDict};
use fedprompt_train::DeterministicTrainer;

const SPEC: &str =
    r#"{"method":{"type":"prompt","num_virtual_tokens":2},"labels":["a","b"],"max_len":16}"#;

fn config(spec: bool) -> proto::ConfigRecord {
    let item = |k: &str, v: Cv| proto::config_record::Item {
        key: k.into(),
        value: Some(proto::ConfigRecordValue { value: Some(v) }),
    };
    let mut items = vec![
        item("server-round", Cv::Sint64(2)),
        item("local-epochs", Cv::Sint64(3)),
        item("lr", Cv::Double(0.5)),
    ];
    if spec {
        items.push(item(SPEC_KEY, Cv::String(SPEC.into())));
    }
    proto::ConfigRecord { items }
}

fn message(kind: &str, arrays: ArrayRecord, spec: bool) -> Message {
    Message {
        metadata: proto::Metadata {
            message_type: kind.into(),
            ..Default::default()
        },
        content: Some(RecordDict(vec![
            ("arrays".into(), Record::Arrays(arrays)),
            ("config".into(), Record::Config(config(spec))),
        ])),
        error: None,
    }
}

fn global() -> ArrayRecord {
    ArrayRecord(vec![
        (
            "prompt_embeddings".into(),
            Array::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]),
        ),
        (
            "classifier.out_proj.bias".into(),
            Array::from_f32(&[2], &[0.5, -0.5]),
        ),
    ])
}

#[test]
fn train_reply_has_arrays_and_num_examples() {
    let trainer = DeterministicTrainer::new(4, 37);
    let expected = trainer.apply(&params_from_arrays(&global()).unwrap(), 2);
    let mut app = FedpromptApp::new(trainer, None);
    let rd = app.handle(&message("train", global(), true)).unwrap();
    let (name, arrays) = rd.arrays().unwrap();
    assert_eq!(name, "arrays");
    // Same names, same order as received; the trainer's update for round 2.
    let names: Vec<&str> = arrays.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["prompt_embeddings", "classifier.out_proj.bias"]);
    assert_eq!(params_from_arrays(arrays).unwrap(), expected);
    let Record::Metrics(m) = &rd.0[1].1 else {
        panic!("second record is not metrics")
    };
    assert_eq!(rd.0[1].0, "metrics");
    assert_eq!(metric(m, "num-examples"), Some(37.0));
    assert!(metric(m, "train_loss").is_some());
}

#[test]
fn evaluate_reply_has_metrics_only() {
    let mut app = FedpromptApp::new(DeterministicTrainer::new(0, 5), None);
    let rd = app.handle(&message("evaluate", global(), true)).unwrap();
    assert_eq!(rd.0.len(), 1);
    let Record::Metrics(m) = &rd.0[0].1 else {
        panic!("not metrics")
    };
    for k in ["num-examples", "accuracy", "loss"] {
        assert!(metric(m, k).is_some(), "{k}");
    }
}

#[test]
fn flower_config_keys_map_to_fedprompt() {
    let c = config(true);
    let items: Vec<_> = c.items.iter().collect();
    let (cfg, spec) = client_config(&items);
    assert_eq!(cfg.get("round"), Some(&ConfigValue::Int(2)));
    assert_eq!(cfg.get("epochs"), Some(&ConfigValue::Int(3)));
    assert_eq!(cfg.get("learning_rate"), Some(&ConfigValue::Float(0.5)));
    assert_eq!(spec.as_deref(), Some(SPEC));
}

#[test]
fn unsupported_and_malformed_messages_get_error_replies() {
    let mut app = FedpromptApp::new(DeterministicTrainer::new(0, 5), None);
    let (code, reason) = app.handle(&message("query", global(), true)).unwrap_err();
    assert_eq!(code, 2);
    assert!(reason.contains("not supported"), "{reason}");
    let (_, reason) = app.handle(&message("train", global(), false)).unwrap_err();
    assert!(reason.contains("--spec"), "{reason}");
    // A truncated array (chunk cut short).
    let mut bad = global();
    let n = bad.0[0].1.data.len();
    bad.0[0].1.data.truncate(n - 3);
    let (_, reason) = app.handle(&message("train", bad, true)).unwrap_err();
    assert!(
        reason.contains("prompt_embeddings") && reason.contains("truncated"),
        "{reason}"
    );
    // A dtype fedprompt cannot read.
    let mut obj = global();
    obj.0[1].1.stype = "torch.pickle".into();
    let (_, reason) = app.handle(&message("evaluate", obj, true)).unwrap_err();
    assert!(reason.contains("not supported"), "{reason}");
    // NaN in the global model.
    let nan = ArrayRecord(vec![("x".into(), Array::from_f32(&[1], &[f32::NAN]))]);
    assert!(app.handle(&message("train", nan, true)).is_err());
}

#[test]
fn clipping_norm_from_flowers_client_side_clipping_clips_the_delta() {
    let trainer = DeterministicTrainer::new(4, 37);
    let g = params_from_arrays(&global()).unwrap();
    let unclipped = trainer.apply(&g, 2);
    let full_norm = unclipped.sub(&g).unwrap().l2_norm();
    let clip = 0.25;
    assert!(
        full_norm > 4.0 * clip,
        "the trainer's delta must need clipping"
    );
    let mut msg = message("train", global(), true);
    let Some(RecordDict(records)) = msg.content.as_mut() else {
        panic!("no content")
    };
    let Record::Config(c) = &mut records[1].1 else {
        panic!("no config")
    };
    c.items.push(proto::config_record::Item {
        key: "clipping_norm".into(),
        value: Some(proto::ConfigRecordValue {
            value: Some(Cv::Double(clip)),
        }),
    });
    let mut app = FedpromptApp::new(trainer, None);
    let rd = app.handle(&msg).unwrap();
    let (_, arrays) = rd.arrays().unwrap();
    let sent = params_from_arrays(arrays).unwrap();
    let delta = sent.sub(&g).unwrap();
    // Clipped to the norm, in the direction of the unclipped delta: g + Δ·(S/‖Δ‖).
    assert!((delta.l2_norm() - clip).abs() < 1e-5, "{}", delta.l2_norm());
    let mut want = unclipped.sub(&g).unwrap();
    want.scale((clip / full_norm) as f32);
    for (name, t) in delta.iter() {
        for (a, b) in t.data().iter().zip(want.get(name).unwrap().data()) {
            assert!((a - b).abs() < 1e-6, "{name}: {a} vs {b}");
        }
    }
}
