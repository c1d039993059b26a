//! Byte-exact interop: the same record tree deflated by fedprompt and by flwr 1.42.0 has the
//! same object ids (ids recorded by `interop/flower/make_object_fixtures.py`), and fedprompt
//! inflates what it deflated.

use std::collections::HashMap;

use fedprompt_flower::object;
use fedprompt_flower::proto::{
    self, config_record_value::Value as Cv, metric_record_value::Value as Mv,
};
use fedprompt_flower::records::{Array, ArrayRecord, Inflater, Message, Record, RecordDict};
use serde_json::Value;

fn fixture() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/flwr-objects.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn citem(k: &str, v: Cv) -> proto::config_record::Item {
    proto::config_record::Item {
        key: k.into(),
        value: Some(proto::ConfigRecordValue { value: Some(v) }),
    }
}

fn mitem(k: &str, v: Mv) -> proto::metric_record::Item {
    proto::metric_record::Item {
        key: k.into(),
        value: Some(proto::MetricRecordValue { value: Some(v) }),
    }
}

fn tree(spec: &str) -> RecordDict {
    let a: Vec<f32> = (0..6).map(|i| i as f32 / 4.0).collect();
    let arrays = ArrayRecord(vec![
        ("a".into(), Array::from_f32(&[2, 3], &a)),
        ("b".into(), Array::from_f32(&[1, 2], &[-1.5, 2.25])),
        ("a_again".into(), Array::from_f32(&[2, 3], &a)),
        (
            "zeros".into(),
            Array::from_f32(&[4_000_000], &vec![0.0; 4_000_000]),
        ),
    ]);
    let metrics = proto::MetricRecord {
        items: vec![
            mitem("num-examples", Mv::Sint64(12)),
            mitem("train_loss", Mv::Double(0.25)),
        ],
    };
    let config = proto::ConfigRecord {
        items: vec![
            citem("server-round", Cv::Sint64(3)),
            citem("learning-rate", Cv::Double(0.01)),
            citem("fedprompt-spec", Cv::String(spec.into())),
            citem("flag", Cv::Bool(true)),
        ],
    };
    RecordDict(vec![
        ("arrays".into(), Record::Arrays(arrays)),
        ("metrics".into(), Record::Metrics(metrics)),
        ("config".into(), Record::Config(config)),
    ])
}

#[test]
fn object_ids_equal_flwr() {
    let fx = fixture();
    let rd = tree(fx["spec"].as_str().unwrap());
    let d = rd.deflate();
    assert_eq!(d.id(), fx["record_dict"].as_str().unwrap(), "RecordDict id");
    let children: Vec<&str> = d
        .tree
        .children
        .iter()
        .map(|c| c.object_id.as_str())
        .collect();
    assert_eq!(
        children,
        vec![
            fx["array_record"].as_str().unwrap(),
            fx["metric_record"].as_str().unwrap(),
            fx["config_record"].as_str().unwrap()
        ]
    );
    // Arrays: `a` and `a_again` are one object, listed once.
    let ar = &d.tree.children[0];
    let want: Vec<&str> = ["a", "b", "zeros"]
        .iter()
        .map(|k| fx["arrays"][k].as_str().unwrap())
        .collect();
    let got: Vec<&str> = ar.children.iter().map(|c| c.object_id.as_str()).collect();
    assert_eq!(got, want);
    assert_eq!(fx["arrays"]["a"], fx["arrays"]["a_again"]);
    // The 16 MB array: four chunks, the middle two identical and stored once.
    let zeros = &ar.children[2];
    let chunk_ids: Vec<&str> = zeros
        .children
        .iter()
        .map(|c| c.object_id.as_str())
        .collect();
    let fx_chunks: Vec<&str> = fx["zeros_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(fx_chunks.len(), 4);
    assert_eq!(chunk_ids, vec![fx_chunks[0], fx_chunks[1], fx_chunks[3]]);
    let (_, body) = d
        .objects
        .iter()
        .find(|(id, _)| id == &zeros.object_id)
        .unwrap();
    let v = object::parse(&zeros.object_id, body).unwrap();
    assert!(std::str::from_utf8(v.body)
        .unwrap()
        .ends_with("\"arraychunk_ids\": [0, 1, 1, 2]}"));
}

#[test]
fn messages_round_trip_through_objects() {
    let fx = fixture();
    let mut m = Message {
        metadata: proto::Metadata {
            run_id: 9,
            src_node_id: 1,
            dst_node_id: 77,
            message_type: "train".into(),
            created_at: 1.9e9,
            ttl: 600.0,
            ..Default::default()
        },
        content: Some(tree(fx["spec"].as_str().unwrap())),
        error: None,
    };
    let d = m.deflate();
    let store: HashMap<String, Vec<u8>> = d.objects.iter().cloned().collect();
    let back = Inflater::new(&store)
        .and_then(|i| i.message(d.id(), m.metadata.clone()))
        .unwrap();
    // Equal, names in the same order (no Debug dump of 16 MB on failure).
    assert!(
        back == m,
        "the inflated message differs from the deflated one"
    );
    let (_, ar) = back.content.as_ref().unwrap().arrays().unwrap();
    let names: Vec<&str> = ar.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["a", "b", "a_again", "zeros"]);
    let arrays = back.content.unwrap();
    let (_, ar) = arrays.arrays().unwrap();
    assert_eq!(ar.0[1].1.to_f32().unwrap(), vec![-1.5, 2.25]);
    // The push form carries an empty RecordDict in place of the content.
    let p = m.to_push_proto();
    assert_eq!(p.content, Some(proto::RecordDict::default()));
    assert_eq!(p.metadata.unwrap().message_id, d.id());
}
