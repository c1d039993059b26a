//! Flower's message tree: Message → RecordDict → {ArrayRecord → Array → ArrayChunk,
//! MetricRecord, ConfigRecord}, deflated into content-addressed objects and inflated back.
//!
//! Bodies are written as flwr 1.42 writes them (Python's `json.dumps` for RecordDict,
//! ArrayRecord and Array; protobuf for MetricRecord, ConfigRecord and Message), so a tree
//! deflated here has the same object ids as the same tree deflated by Flower.

use std::collections::HashMap;

use prost::Message as _;

use crate::error::{FlowerError, Result};
use crate::npy;
use crate::object::{self, encode, unique, MAX_CHUNK_BYTES};
use crate::proto;

/// `Array.stype` of numpy-serialised arrays.
pub const STYPE_NUMPY: &str = "numpy.ndarray";

/// One array: dtype and shape as numpy names them, and its serialised bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// numpy dtype name (`float32`).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Serialisation type ([`STYPE_NUMPY`]).
    pub stype: String,
    /// The serialised array (an `.npy` file for [`STYPE_NUMPY`]).
    pub data: Vec<u8>,
}

impl Array {
    /// A float32 array, serialised as `np.save` does.
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Self {
        Self {
            dtype: "float32".into(),
            shape: shape.to_vec(),
            stype: STYPE_NUMPY.into(),
            data: npy::encode_f32(shape, values),
        }
    }

    /// The values as f32, checking the serialisation and that the `.npy` shape agrees.
    pub fn to_f32(&self) -> std::result::Result<Vec<f32>, String> {
        if self.stype != STYPE_NUMPY {
            return Err(format!(
                "serialisation `{}` is not supported (only `{STYPE_NUMPY}`)",
                self.stype
            ));
        }
        let n = npy::decode(&self.data)?;
        if n.shape != self.shape {
            return Err(format!(
                "the array says shape {:?} but its .npy data has shape {:?}",
                self.shape, n.shape
            ));
        }
        n.to_f32()
    }
}

/// Named arrays, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArrayRecord(pub Vec<(String, Array)>);

/// One record of a [`RecordDict`].
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// Arrays (model parameters).
    Arrays(ArrayRecord),
    /// Metrics (numbers).
    Metrics(proto::MetricRecord),
    /// Configuration (numbers, strings, bytes, booleans).
    Config(proto::ConfigRecord),
}

/// Named records, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordDict(pub Vec<(String, Record)>);

impl RecordDict {
    /// The first array record, with its name.
    pub fn arrays(&self) -> Option<(&str, &ArrayRecord)> {
        self.0.iter().find_map(|(k, r)| match r {
            Record::Arrays(a) => Some((k.as_str(), a)),
            _ => None,
        })
    }

    /// All config records, merged in order (later keys win).
    pub fn config(&self) -> Vec<&proto::config_record::Item> {
        self.0
            .iter()
            .filter_map(|(_, r)| match r {
                Record::Config(c) => Some(c.items.iter()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// A Flower message: metadata plus content or error.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Routing and bookkeeping (its `message_id` is the message object's id).
    pub metadata: proto::Metadata,
    /// The records, unless this is an error message.
    pub content: Option<RecordDict>,
    /// The error, for an error reply.
    pub error: Option<proto::Error>,
}

/// A deflated tree: every object's bytes (children before parents) and the tree of ids.
#[derive(Clone, Debug, Default)]
pub struct Deflated {
    /// `(id, bytes)` of every distinct object, in post-order.
    pub objects: Vec<(String, Vec<u8>)>,
    /// The ids as Flower's `ObjectTree`.
    pub tree: proto::ObjectTree,
}

impl Deflated {
    /// The root's id.
    pub fn id(&self) -> &str {
        &self.tree.object_id
    }
}

#[derive(Default)]
struct Sink {
    objects: Vec<(String, Vec<u8>)>,
}

impl Sink {
    fn put(
        &mut self,
        class: &str,
        children: &[proto::ObjectTree],
        body: &[u8],
    ) -> proto::ObjectTree {
        let ids: Vec<String> = children.iter().map(|c| c.object_id.clone()).collect();
        let bytes = encode(class, &ids, body);
        let id = object::object_id(&bytes);
        if !self.objects.iter().any(|(i, _)| *i == id) {
            self.objects.push((id.clone(), bytes));
        }
        proto::ObjectTree {
            object_id: id,
            children: children.to_vec(),
        }
    }
}

/// Python's `json.dumps` of a string (ASCII only, `\uXXXX` escapes).
fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// Python's `json.dumps` of a `{str: str}` mapping.
fn py_refs(refs: &[(String, String)]) -> String {
    let items: Vec<String> = refs
        .iter()
        .map(|(k, v)| format!("{}: {}", py_str(k), py_str(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// Children of a tree, deduplicated by id (Flower's children are a dict keyed by id).
fn dedup(trees: Vec<proto::ObjectTree>) -> Vec<proto::ObjectTree> {
    let mut out: Vec<proto::ObjectTree> = Vec::new();
    for t in trees {
        if !out.iter().any(|o| o.object_id == t.object_id) {
            out.push(t);
        }
    }
    out
}

fn deflate_array(sink: &mut Sink, a: &Array) -> proto::ObjectTree {
    let chunks: Vec<proto::ObjectTree> = a
        .data
        .chunks(MAX_CHUNK_BYTES)
        .map(|c| sink.put("ArrayChunk", &[], c))
        .collect();
    let uniq = dedup(chunks.clone());
    let idx: Vec<String> = chunks
        .iter()
        .map(|c| {
            uniq.iter()
                .position(|u| u.object_id == c.object_id)
                .unwrap_or(0)
                .to_string()
        })
        .collect();
    let shape: Vec<String> = a.shape.iter().map(|d| d.to_string()).collect();
    let body = format!(
        "{{\"dtype\": {}, \"shape\": [{}], \"stype\": {}, \"arraychunk_ids\": [{}]}}",
        py_str(&a.dtype),
        shape.join(", "),
        py_str(&a.stype),
        idx.join(", ")
    );
    sink.put("Array", &uniq, body.as_bytes())
}

fn deflate_record(sink: &mut Sink, r: &Record) -> proto::ObjectTree {
    match r {
        Record::Arrays(ar) => {
            let trees: Vec<proto::ObjectTree> =
                ar.0.iter().map(|(_, a)| deflate_array(sink, a)).collect();
            let refs: Vec<(String, String)> =
                ar.0.iter()
                    .zip(&trees)
                    .map(|((k, _), t)| (k.clone(), t.object_id.clone()))
                    .collect();
            sink.put("ArrayRecord", &dedup(trees), py_refs(&refs).as_bytes())
        }
        Record::Metrics(m) => sink.put("MetricRecord", &[], &m.encode_to_vec()),
        Record::Config(c) => sink.put("ConfigRecord", &[], &c.encode_to_vec()),
    }
}

fn deflate_recorddict(sink: &mut Sink, rd: &RecordDict) -> proto::ObjectTree {
    let trees: Vec<proto::ObjectTree> = rd.0.iter().map(|(_, r)| deflate_record(sink, r)).collect();
    let refs: Vec<(String, String)> =
        rd.0.iter()
            .zip(&trees)
            .map(|((k, _), t)| (k.clone(), t.object_id.clone()))
            .collect();
    sink.put("RecordDict", &dedup(trees), py_refs(&refs).as_bytes())
}

impl RecordDict {
    /// Deflates the record dict (its objects and tree).
    pub fn deflate(&self) -> Deflated {
        let mut sink = Sink::default();
        let tree = deflate_recorddict(&mut sink, self);
        Deflated {
            objects: sink.objects,
            tree,
        }
    }
}

impl Message {
    /// Deflates the message; its id (the root's) is also written into `metadata.message_id`.
    pub fn deflate(&mut self) -> Deflated {
        let mut sink = Sink::default();
        let children: Vec<proto::ObjectTree> = match &self.content {
            Some(rd) if self.error.is_none() => vec![deflate_recorddict(&mut sink, rd)],
            _ => Vec::new(),
        };
        let mut meta = self.metadata.clone();
        meta.message_id = String::new();
        let body = proto::Message {
            metadata: Some(meta),
            content: None,
            error: self.error.clone(),
        }
        .encode_to_vec();
        let tree = sink.put("Message", &children, &body);
        self.metadata.message_id = tree.object_id.clone();
        Deflated {
            objects: sink.objects,
            tree,
        }
    }

    /// The message as `PushMessages` carries it: metadata, and an empty RecordDict in
    /// place of the content (which travels as objects) or the error.
    pub fn to_push_proto(&self) -> proto::Message {
        proto::Message {
            metadata: Some(self.metadata.clone()),
            content: if self.error.is_none() {
                Some(proto::RecordDict::default())
            } else {
                None
            },
            error: self.error.clone(),
        }
    }
}

/// A JSON object of `name → id`, in the order of the text (serde_json's map would sort it).
struct OrderedRefs(Vec<(String, String)>);

impl<'de> serde::Deserialize<'de> for OrderedRefs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedRefs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object mapping names to object ids")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<OrderedRefs, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.iter().any(|(name, _): &(String, String)| *name == k) {
                        return Err(serde::de::Error::custom(format!(
                            "name `{k}` appears twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(OrderedRefs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Rebuilds messages from pulled objects, checking every hash and structure.
pub struct Inflater<'a> {
    /// Every object, hashed and split once.
    views: HashMap<&'a str, object::ObjectView<'a>>,
}

impl<'a> Inflater<'a> {
    /// Over a set of `id → bytes`; fails if any object's bytes do not hash to its id or its
    /// head is malformed.
    pub fn new(objects: &'a HashMap<String, Vec<u8>>) -> Result<Self> {
        let views = objects
            .iter()
            .map(|(id, bytes)| Ok((id.as_str(), object::parse(id, bytes)?)))
            .collect::<Result<_>>()?;
        Ok(Self { views })
    }

    fn any(&self, id: &str) -> Result<&object::ObjectView<'a>> {
        self.views
            .get(id)
            .ok_or_else(|| FlowerError::object(id, "was not received"))
    }

    fn view(&self, id: &str, class: &str) -> Result<&object::ObjectView<'a>> {
        let v = self.any(id)?;
        if v.class != class {
            return Err(FlowerError::object(
                id,
                format!("is a `{}` where a `{class}` was expected", v.class),
            ));
        }
        Ok(v)
    }

    fn refs(id: &str, body: &[u8], children: &[&str]) -> Result<Vec<(String, String)>> {
        let out = serde_json::from_slice::<OrderedRefs>(body)
            .map_err(|e| FlowerError::object(id, format!("body is not a JSON object of ids: {e}")))?
            .0;
        let mut want: Vec<&str> = out.iter().map(|(_, v)| v.as_str()).collect();
        want.sort_unstable();
        want.dedup();
        let mut have: Vec<&str> = children.to_vec();
        have.sort_unstable();
        have.dedup();
        if want != have {
            return Err(FlowerError::object(
                id,
                "its body refers to other objects than its head lists",
            ));
        }
        Ok(out)
    }

    /// The message with id `id` (its content tree must be among the objects).
    pub fn message(&self, id: &str, metadata: proto::Metadata) -> Result<Message> {
        let v = self.view(id, "Message")?;
        let pm = proto::Message::decode(v.body)
            .map_err(|e| FlowerError::object(id, format!("Message body is not protobuf: {e}")))?;
        let error = pm.error;
        let content = match (v.children.as_slice(), &error) {
            ([], Some(_)) => None,
            ([rd], None) => Some(self.recorddict(rd)?),
            ([], None) => Some(RecordDict::default()),
            _ => {
                return Err(FlowerError::object(
                    id,
                    "a Message must have one RecordDict or an error",
                ))
            }
        };
        Ok(Message {
            metadata,
            content,
            error,
        })
    }

    fn recorddict(&self, id: &str) -> Result<RecordDict> {
        let v = self.view(id, "RecordDict")?;
        let refs = Self::refs(id, v.body, &v.children)?;
        let mut out = Vec::with_capacity(refs.len());
        for (k, cid) in refs {
            let class = self.any(&cid)?.class;
            let rec = match class {
                "ArrayRecord" => Record::Arrays(self.arrayrecord(&cid)?),
                "MetricRecord" => {
                    let b = self.view(&cid, class)?.body;
                    Record::Metrics(proto::MetricRecord::decode(b).map_err(|e| {
                        FlowerError::object(&cid, format!("MetricRecord body is not protobuf: {e}"))
                    })?)
                }
                "ConfigRecord" => {
                    let b = self.view(&cid, class)?.body;
                    Record::Config(proto::ConfigRecord::decode(b).map_err(|e| {
                        FlowerError::object(&cid, format!("ConfigRecord body is not protobuf: {e}"))
                    })?)
                }
                other => {
                    return Err(FlowerError::object(
                        &cid,
                        format!("a `{other}` cannot be a record of a RecordDict"),
                    ))
                }
            };
            out.push((k, rec));
        }
        Ok(RecordDict(out))
    }

    fn arrayrecord(&self, id: &str) -> Result<ArrayRecord> {
        let v = self.view(id, "ArrayRecord")?;
        let refs = Self::refs(id, v.body, &v.children)?;
        refs.into_iter()
            .map(|(k, aid)| Ok((k, self.array(&aid)?)))
            .collect::<Result<Vec<_>>>()
            .map(ArrayRecord)
    }

    fn array(&self, id: &str) -> Result<Array> {
        #[derive(serde::Deserialize)]
        struct Meta {
            dtype: String,
            shape: Vec<usize>,
            stype: String,
            arraychunk_ids: Vec<usize>,
        }
        let v = self.view(id, "Array")?;
        let m: Meta = serde_json::from_slice(v.body)
            .map_err(|e| FlowerError::object(id, format!("Array body: {e}")))?;
        let mut data = Vec::new();
        for &i in &m.arraychunk_ids {
            let cid = v.children.get(i).ok_or_else(|| {
                FlowerError::object(
                    id,
                    format!("chunk index {i} but only {} chunks", v.children.len()),
                )
            })?;
            data.extend_from_slice(self.view(cid, "ArrayChunk")?.body);
        }
        let used: Vec<String> = unique(
            m.arraychunk_ids
                .iter()
                .filter_map(|&i| v.children.get(i))
                .map(|s| s.to_string()),
        );
        if used.len() != unique(v.children.iter().map(|s| s.to_string())).len() {
            return Err(FlowerError::object(id, "lists chunks it does not use"));
        }
        Ok(Array {
            dtype: m.dtype,
            shape: m.shape,
            stype: m.stype,
            data,
        })
    }
}

/// All ids of a tree, children before parents.
pub fn tree_ids(tree: &proto::ObjectTree, out: &mut Vec<String>) {
    for c in &tree.children {
        tree_ids(c, out);
    }
    if !out.contains(&tree.object_id) {
        out.push(tree.object_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let arrays = ArrayRecord(vec![
            ("a".into(), Array::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0])),
            ("b".into(), Array::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0])),
            ("c".into(), Array::from_f32(&[3], &[0.5, -0.5, 9.0])),
        ]);
        let metrics = proto::MetricRecord {
            items: vec![proto::metric_record::Item {
                key: "num-examples".into(),
                value: Some(proto::MetricRecordValue {
                    value: Some(proto::metric_record_value::Value::Sint64(12)),
                }),
            }],
        };
        Message {
            metadata: proto::Metadata {
                run_id: 7,
                message_type: "train".into(),
                created_at: 1.8e9,
                ttl: 3600.0,
                ..Default::default()
            },
            content: Some(RecordDict(vec![
                ("arrays".into(), Record::Arrays(arrays)),
                ("metrics".into(), Record::Metrics(metrics)),
            ])),
            error: None,
        }
    }

    #[test]
    fn deflate_inflate_roundtrip() {
        let mut m = sample();
        let d = m.deflate();
        assert_eq!(m.metadata.message_id, d.id());
        // Identical arrays share one object: a, b, c → 2 Arrays, 2 chunks.
        let classes: Vec<String> = d
            .objects
            .iter()
            .map(|(id, b)| object::parse(id, b).unwrap().class.to_string())
            .collect();
        assert_eq!(classes.iter().filter(|c| *c == "Array").count(), 2);
        let store: HashMap<String, Vec<u8>> = d.objects.iter().cloned().collect();
        let back = Inflater::new(&store)
            .and_then(|i| i.message(d.id(), m.metadata.clone()))
            .unwrap();
        assert_eq!(back, m);
        let mut ids = Vec::new();
        tree_ids(&d.tree, &mut ids);
        assert_eq!(ids.len(), d.objects.len());
    }

    #[test]
    fn tampered_objects_are_refused() {
        let mut m = sample();
        let d = m.deflate();
        let mut store: HashMap<String, Vec<u8>> = d.objects.iter().cloned().collect();
        // Flip one byte of a chunk: its hash no longer matches its id.
        let (cid, _) = d
            .objects
            .iter()
            .find(|(id, b)| object::parse(id, b).unwrap().class == "ArrayChunk")
            .unwrap();
        if let Some(b) = store.get_mut(cid).unwrap().last_mut() {
            *b ^= 1;
        }
        let e = Inflater::new(&store)
            .and_then(|i| i.message(d.id(), m.metadata.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hash"), "{e}");
        // A missing object.
        let mut store: HashMap<String, Vec<u8>> = d.objects.iter().cloned().collect();
        store.remove(cid);
        assert!(Inflater::new(&store)
            .and_then(|i| i.message(d.id(), m.metadata))
            .is_err());
    }

    #[test]
    fn python_json_strings() {
        assert_eq!(py_str("a\"é\n"), "\"a\\\"\\u00e9\\n\"");
        assert_eq!(
            py_refs(&[("k".into(), "v".into()), ("x".into(), "y".into())]),
            "{\"k\": \"v\", \"x\": \"y\"}"
        );
    }
}
