//! Generated gRPC types of `proto/fedprompt.proto` (package `fedprompt.v1`) and conversions.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("fedprompt.v1");

use fedprompt_fl::{ClientConfig, ConfigValue as FlValue};

/// Protocol version spoken by this build: 2 adds compressed uploads (the `update_encoding`
/// round-configuration key) and secure aggregation (the `TASK_KIND_SECAGG_*` tasks and the
/// `SecAggReply` call).
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest version a server accepts from clients when its run uses neither compression
/// nor secure aggregation (version 1 clients upload plain parameters only).
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Converts a round configuration to its wire form.
pub fn config_to_wire(config: &ClientConfig) -> std::collections::BTreeMap<String, ConfigValue> {
    config
        .iter()
        .map(|(k, v)| {
            let value = match v {
                FlValue::Bool(b) => config_value::Value::BoolValue(*b),
                FlValue::Int(i) => config_value::Value::IntValue(*i),
                FlValue::Float(f) => config_value::Value::FloatValue(*f),
                FlValue::Str(s) => config_value::Value::StringValue(s.clone()),
            };
            (k.clone(), ConfigValue { value: Some(value) })
        })
        .collect()
}

/// Converts a wire configuration back; entries without a value are dropped.
pub fn config_from_wire(wire: &std::collections::BTreeMap<String, ConfigValue>) -> ClientConfig {
    wire.iter()
        .filter_map(|(k, v)| {
            let value = match v.value.as_ref()? {
                config_value::Value::BoolValue(b) => FlValue::Bool(*b),
                config_value::Value::IntValue(i) => FlValue::Int(*i),
                config_value::Value::FloatValue(f) => FlValue::Float(*f),
                config_value::Value::StringValue(s) => FlValue::Str(s.clone()),
            };
            Some((k.clone(), value))
        })
        .collect()
}
