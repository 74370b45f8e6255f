//! An adapter for Seldon Core 2: Seldon writes each model's requests and
//! responses to Kafka (`seldon.<namespace>.model.<model>.inputs` and
//! `.outputs`) as the Open Inference Protocol's protobuf `ModelInferRequest`
//! and `ModelInferResponse`, with the request id in the `x-request-id`
//! header. This adapter consumes those topics, joins each request with its
//! response (a bounded, expiring [`Pairing`]) and writes the prediction
//! events, with the version from the response's `model_version` (or the
//! configured one when Seldon leaves it empty).
//!
//! The messages are decoded from the protocol's definition
//! (`grpc_predict_v2.proto`) written out below with `prost` derives, tensor
//! contents typed or raw (little-endian, BYTES as 4-byte-length-prefixed
//! strings).
//!
//! Delivery: offsets are committed only below the oldest message whose
//! exchange is still open, so a restart reads again every half whose pair
//! was not yet logged (at least once; an exchange logged just before a crash
//! may be logged again, with the same prediction id).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::features::{FeatureBatch, InputLayout};
use crate::log::{Exchange, InferenceLog};
use crate::outputs::OutputMapping;
use crate::pairing::{Half, Paired, Pairing};
use crate::protocol::{Datatype, InferRequest, InferResponse, Tensor, TensorData};
use crate::telemetry::Telemetry;

/// The Open Inference Protocol's gRPC messages (`inference` package),
/// the fields Tidewatch reads.
pub mod proto {
    use std::collections::HashMap;

    /// `InferParameter`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferParameter {
        #[prost(oneof = "infer_parameter::ParameterChoice", tags = "1, 2, 3")]
        pub parameter_choice: Option<infer_parameter::ParameterChoice>,
    }

    /// `InferParameter.parameter_choice`.
    pub mod infer_parameter {
        /// One parameter value.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum ParameterChoice {
            #[prost(bool, tag = "1")]
            BoolParam(bool),
            #[prost(int64, tag = "2")]
            Int64Param(i64),
            #[prost(string, tag = "3")]
            StringParam(String),
        }
    }

    /// `InferTensorContents`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferTensorContents {
        #[prost(bool, repeated, tag = "1")]
        pub bool_contents: Vec<bool>,
        #[prost(int32, repeated, tag = "2")]
        pub int_contents: Vec<i32>,
        #[prost(int64, repeated, tag = "3")]
        pub int64_contents: Vec<i64>,
        #[prost(uint32, repeated, tag = "4")]
        pub uint_contents: Vec<u32>,
        #[prost(uint64, repeated, tag = "5")]
        pub uint64_contents: Vec<u64>,
        #[prost(float, repeated, tag = "6")]
        pub fp32_contents: Vec<f32>,
        #[prost(double, repeated, tag = "7")]
        pub fp64_contents: Vec<f64>,
        #[prost(bytes = "vec", repeated, tag = "8")]
        pub bytes_contents: Vec<Vec<u8>>,
    }

    /// `ModelInferRequest.InferInputTensor` and
    /// `ModelInferResponse.InferOutputTensor` (the same fields).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
        #[prost(map = "string, message", tag = "4")]
        pub parameters: HashMap<String, InferParameter>,
        #[prost(message, optional, tag = "5")]
        pub contents: Option<InferTensorContents>,
    }

    /// `ModelInferRequest.InferRequestedOutputTensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferRequestedOutputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(map = "string, message", tag = "2")]
        pub parameters: HashMap<String, InferParameter>,
    }

    /// `ModelInferRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferRequest {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(map = "string, message", tag = "4")]
        pub parameters: HashMap<String, InferParameter>,
        #[prost(message, repeated, tag = "5")]
        pub inputs: Vec<InferTensor>,
        #[prost(message, repeated, tag = "6")]
        pub outputs: Vec<InferRequestedOutputTensor>,
        #[prost(bytes = "vec", repeated, tag = "7")]
        pub raw_input_contents: Vec<Vec<u8>>,
    }

    /// `ModelInferResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferResponse {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(map = "string, message", tag = "4")]
        pub parameters: HashMap<String, InferParameter>,
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<InferTensor>,
        #[prost(bytes = "vec", repeated, tag = "6")]
        pub raw_output_contents: Vec<Vec<u8>>,
    }
}

/// A protobuf tensor (typed or raw contents) as a protocol [`Tensor`].
fn tensor(proto: &proto::InferTensor, raw: Option<&[u8]>) -> Result<Tensor, String> {
    let datatype: Datatype = serde_json::from_value(serde_json::Value::String(
        proto.datatype.clone(),
    ))
    .map_err(|_| {
        format!(
            "tensor `{}`: unknown datatype `{}`",
            proto.name, proto.datatype
        )
    })?;
    let shape = proto
        .shape
        .iter()
        .map(|d| {
            u64::try_from(*d).map_err(|_| format!("tensor `{}`: negative dimension", proto.name))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    let data = match raw {
        Some(bytes) => {
            raw_data(datatype, bytes).map_err(|e| format!("tensor `{}`: {e}", proto.name))?
        }
        None => {
            let contents = proto.contents.clone().unwrap_or_default();
            match datatype {
                Datatype::Bool => TensorData::Bools(contents.bool_contents),
                Datatype::Bytes => TensorData::Text(
                    contents
                        .bytes_contents
                        .into_iter()
                        .map(|b| {
                            String::from_utf8(b).map_err(|_| "BYTES that are not UTF-8".to_owned())
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Datatype::Int8 | Datatype::Int16 | Datatype::Int32 => {
                    TensorData::Numbers(contents.int_contents.into_iter().map(f64::from).collect())
                }
                Datatype::Int64 => TensorData::Numbers(
                    contents
                        .int64_contents
                        .into_iter()
                        .map(|v| v as f64)
                        .collect(),
                ),
                Datatype::Uint8 | Datatype::Uint16 | Datatype::Uint32 => {
                    TensorData::Numbers(contents.uint_contents.into_iter().map(f64::from).collect())
                }
                Datatype::Uint64 => TensorData::Numbers(
                    contents
                        .uint64_contents
                        .into_iter()
                        .map(|v| v as f64)
                        .collect(),
                ),
                Datatype::Fp32 => {
                    TensorData::Numbers(contents.fp32_contents.into_iter().map(f64::from).collect())
                }
                Datatype::Fp64 => TensorData::Numbers(contents.fp64_contents),
                Datatype::Fp16 => {
                    return Err(format!(
                        "tensor `{}`: FP16 comes only as raw contents",
                        proto.name
                    ))
                }
            }
        }
    };
    let tensor = Tensor {
        name: proto.name.clone(),
        shape,
        datatype,
        parameters: None,
        data,
    };
    tensor.validate()?;
    Ok(tensor)
}

/// Raw little-endian contents of one tensor.
fn raw_data(datatype: Datatype, bytes: &[u8]) -> Result<TensorData, String> {
    fn numbers<const N: usize>(
        bytes: &[u8],
        read: impl Fn([u8; N]) -> f64,
    ) -> Result<TensorData, String> {
        if !bytes.len().is_multiple_of(N) {
            return Err(format!(
                "{} raw bytes are not a multiple of {N}",
                bytes.len()
            ));
        }
        Ok(TensorData::Numbers(
            bytes
                .chunks_exact(N)
                .map(|chunk| read(chunk.try_into().expect("chunks of N")))
                .collect(),
        ))
    }
    match datatype {
        Datatype::Bool => Ok(TensorData::Bools(bytes.iter().map(|b| *b != 0).collect())),
        Datatype::Uint8 => numbers::<1>(bytes, |b| f64::from(b[0])),
        Datatype::Int8 => numbers::<1>(bytes, |b| f64::from(b[0] as i8)),
        Datatype::Uint16 => numbers::<2>(bytes, |b| f64::from(u16::from_le_bytes(b))),
        Datatype::Int16 => numbers::<2>(bytes, |b| f64::from(i16::from_le_bytes(b))),
        Datatype::Fp16 => numbers::<2>(bytes, |b| half_to_f64(u16::from_le_bytes(b))),
        Datatype::Uint32 => numbers::<4>(bytes, |b| f64::from(u32::from_le_bytes(b))),
        Datatype::Int32 => numbers::<4>(bytes, |b| f64::from(i32::from_le_bytes(b))),
        Datatype::Fp32 => numbers::<4>(bytes, |b| f64::from(f32::from_le_bytes(b))),
        Datatype::Uint64 => numbers::<8>(bytes, |b| u64::from_le_bytes(b) as f64),
        Datatype::Int64 => numbers::<8>(bytes, |b| i64::from_le_bytes(b) as f64),
        Datatype::Fp64 => numbers::<8>(bytes, f64::from_le_bytes),
        Datatype::Bytes => {
            let mut strings = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let (length, tail) = rest.split_at_checked(4).ok_or("a truncated BYTES length")?;
                let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
                let (text, tail) = tail
                    .split_at_checked(length)
                    .ok_or("a truncated BYTES element")?;
                strings.push(
                    String::from_utf8(text.to_vec()).map_err(|_| "BYTES that are not UTF-8")?,
                );
                rest = tail;
            }
            Ok(TensorData::Text(strings))
        }
    }
}

/// An IEEE half-precision float.
fn half_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

/// Decodes a `ModelInferRequest`.
pub fn decode_request(bytes: &[u8]) -> Result<InferRequest, String> {
    let message = <proto::ModelInferRequest as prost::Message>::decode(bytes)
        .map_err(|e| format!("not a ModelInferRequest: {e}"))?;
    let raw = &message.raw_input_contents;
    if !raw.is_empty() && raw.len() != message.inputs.len() {
        return Err(format!(
            "{} raw contents for {} inputs",
            raw.len(),
            message.inputs.len()
        ));
    }
    Ok(InferRequest {
        id: (!message.id.is_empty()).then(|| message.id.clone()),
        parameters: None,
        inputs: message
            .inputs
            .iter()
            .enumerate()
            .map(|(index, input)| tensor(input, raw.get(index).map(Vec::as_slice)))
            .collect::<Result<_, _>>()?,
        outputs: None,
    })
}

/// Decodes a `ModelInferResponse`.
pub fn decode_response(bytes: &[u8]) -> Result<InferResponse, String> {
    let message = <proto::ModelInferResponse as prost::Message>::decode(bytes)
        .map_err(|e| format!("not a ModelInferResponse: {e}"))?;
    let raw = &message.raw_output_contents;
    if !raw.is_empty() && raw.len() != message.outputs.len() {
        return Err(format!(
            "{} raw contents for {} outputs",
            raw.len(),
            message.outputs.len()
        ));
    }
    Ok(InferResponse {
        model_name: message.model_name.clone(),
        model_version: (!message.model_version.is_empty()).then(|| message.model_version.clone()),
        id: (!message.id.is_empty()).then(|| message.id.clone()),
        parameters: None,
        outputs: message
            .outputs
            .iter()
            .enumerate()
            .map(|(index, output)| tensor(output, raw.get(index).map(Vec::as_slice)))
            .collect::<Result<_, _>>()?,
    })
}

/// One Seldon model whose topics are read.
#[derive(Debug, Clone)]
pub struct SeldonModel {
    /// The model's name in Seldon (in the topic names).
    pub seldon_model: String,
    /// The Tidewatch model its predictions are logged for.
    pub model: String,
    /// Its features.
    pub features: Vec<String>,
    /// How requests carry them.
    pub layout: InputLayout,
    /// Where its predictions are.
    pub outputs: OutputMapping,
    /// The version when the response names none.
    pub version: Option<String>,
}

/// Where a message came from, to commit past it once its exchange is done.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug)]
struct Message {
    payload: Vec<u8>,
    model: usize,
    timestamp_ms: Option<i64>,
    position: Option<Position>,
}

/// The offsets of one partition read and not yet done with.
#[derive(Debug)]
struct OpenOffsets {
    /// Offsets whose exchange is still open.
    open: BTreeSet<i64>,
    /// One past the last offset read.
    next: i64,
}

/// The adapter's state (joining and the offsets it may commit).
pub struct SeldonAdapter {
    namespace: String,
    models: Vec<SeldonModel>,
    pairing: Mutex<Pairing<Message>>,
    /// (topic, partition) → offsets read whose exchange is still open.
    open: Mutex<BTreeMap<(String, i32), OpenOffsets>>,
    log: InferenceLog,
    telemetry: Telemetry,
}

impl SeldonAdapter {
    /// Reads `models` of `namespace`, writing to `log`.
    pub fn new(
        namespace: String,
        models: Vec<SeldonModel>,
        max_pending: usize,
        max_wait: Duration,
        log: InferenceLog,
        telemetry: Telemetry,
    ) -> Self {
        Self {
            namespace,
            models,
            pairing: Mutex::new(Pairing::new(max_pending, max_wait)),
            open: Mutex::new(BTreeMap::new()),
            log,
            telemetry,
        }
    }

    /// The topics to read: inputs and outputs of every model.
    pub fn topics(&self) -> Vec<String> {
        self.models
            .iter()
            .flat_map(|m| {
                ["inputs", "outputs"].map(|kind| {
                    format!("seldon.{}.model.{}.{kind}", self.namespace, m.seldon_model)
                })
            })
            .collect()
    }

    /// Which model and half a topic holds.
    fn topic_of(&self, topic: &str) -> Option<(usize, Half)> {
        let rest = topic.strip_prefix(&format!("seldon.{}.model.", self.namespace))?;
        let (model, kind) = rest.rsplit_once('.')?;
        let half = match kind {
            "inputs" => Half::Request,
            "outputs" => Half::Response,
            _ => return None,
        };
        let index = self.models.iter().position(|m| m.seldon_model == model)?;
        Some((index, half))
    }

    /// Takes one message of `topic`; what became of it.
    pub fn receive(
        &self,
        topic: &str,
        request_id: Option<&str>,
        payload: &[u8],
        timestamp_ms: Option<i64>,
        position: Option<Position>,
    ) -> &'static str {
        // Every message read is open until its exchange is done: this one
        // stays open while it waits (alone, or as the newer of a duplicate
        // pair); any other outcome is done with it.
        if let Some(position) = &position {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let entry = open
                .entry((position.topic.clone(), position.partition))
                .or_insert_with(|| OpenOffsets {
                    open: BTreeSet::new(),
                    next: position.offset,
                });
            entry.open.insert(position.offset);
            entry.next = entry.next.max(position.offset + 1);
        }
        let outcome = self.handle(topic, request_id, payload, timestamp_ms, position.clone());
        self.telemetry.adapter_event("seldon", outcome);
        if !matches!(outcome, "waiting" | "duplicate") {
            if let Some(position) = position {
                self.close(&position);
            }
        }
        outcome
    }

    fn handle(
        &self,
        topic: &str,
        request_id: Option<&str>,
        payload: &[u8],
        timestamp_ms: Option<i64>,
        position: Option<Position>,
    ) -> &'static str {
        let Some((model, half)) = self.topic_of(topic) else {
            return "unknown_service";
        };
        let Some(id) = request_id.filter(|id| !id.is_empty()) else {
            tracing::warn!(topic, "a Seldon message without x-request-id");
            return "undecodable";
        };
        let message = Message {
            payload: payload.to_vec(),
            model,
            timestamp_ms,
            position,
        };
        let mut dropped = Vec::new();
        let paired = self
            .pairing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .offer(
                id.to_owned(),
                half,
                message,
                Instant::now(),
                |why, message| dropped.push((why, message)),
            );
        for (why, message) in dropped {
            self.telemetry.adapter_event("seldon", why.as_str());
            if let Some(position) = &message.position {
                self.close(position);
            }
        }
        match paired {
            Paired::Waiting => "waiting",
            Paired::Duplicate(previous) => {
                if let Some(position) = &previous.position {
                    self.close(position);
                }
                "duplicate"
            }
            Paired::Joined { request, response } => {
                if let Some(position) = &request.position {
                    self.close(position);
                }
                if let Some(position) = &response.position {
                    self.close(position);
                }
                match self.log_exchange(id, &request, &response) {
                    Ok(()) => "joined",
                    Err(message) => {
                        tracing::warn!(id, %message, "a Seldon exchange could not be read");
                        if message.starts_with("no version") {
                            "no_version"
                        } else {
                            "undecodable"
                        }
                    }
                }
            }
        }
    }

    /// The exchange holding `position` is done (logged or dropped).
    fn close(&self, position: &Position) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = open.get_mut(&(position.topic.clone(), position.partition)) {
            entry.open.remove(&position.offset);
        }
    }

    /// Per (topic, partition), the offset to commit: below the oldest
    /// message whose exchange is open, else past the last one read.
    pub fn committable(&self) -> Vec<(String, i32, i64)> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.iter()
            .map(|((topic, partition), offsets)| {
                let commit = offsets.open.first().copied().unwrap_or(offsets.next);
                (topic.clone(), *partition, commit)
            })
            .collect()
    }

    /// Halves waiting for their other half.
    pub fn waiting(&self) -> usize {
        self.pairing.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn log_exchange(&self, id: &str, request: &Message, response: &Message) -> Result<(), String> {
        let model = &self.models[request.model];
        let decoded_request = decode_request(&request.payload)?;
        let decoded_response = decode_response(&response.payload)?;
        let features =
            FeatureBatch::from_request(&decoded_request, &model.layout, &model.features)?;
        let version = decoded_response
            .model_version
            .clone()
            .or_else(|| model.version.clone())
            .ok_or("no version: the response names none and none is configured")?;
        let predictions = model
            .outputs
            .predictions(&decoded_response, features.rows())?;
        self.log.record_exchange(&Exchange {
            model: &model.model,
            version: &version,
            id,
            features: &features,
            predictions: &predictions,
            request_ms: request.timestamp_ms,
            response_ms: response.timestamp_ms,
        });
        Ok(())
    }
}

/// Reads the adapter's topics with `consumer` until `shutdown`, committing
/// every `commit_interval` what [`SeldonAdapter::committable`] allows.
pub async fn run(
    adapter: std::sync::Arc<SeldonAdapter>,
    consumer: rdkafka::consumer::StreamConsumer,
    commit_interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::consumer::{CommitMode, Consumer};
    use rdkafka::message::{Headers, Message as _};
    let topics = adapter.topics();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let mut ticker = tokio::time::interval(commit_interval);
    tokio::pin!(shutdown);
    let commit = |consumer: &rdkafka::consumer::StreamConsumer, mode| {
        let mut offsets = rdkafka::TopicPartitionList::new();
        for (topic, partition, offset) in adapter.committable() {
            let _ =
                offsets.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset));
        }
        if offsets.count() > 0 {
            if let Err(error) = consumer.commit(&offsets, mode) {
                tracing::warn!(%error, "committing the Seldon adapter's offsets failed");
            }
        }
    };
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => commit(&consumer, CommitMode::Async),
            message = consumer.recv() => {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        // A broker outage: wait a little rather than spin;
                        // the consumer reconnects by itself.
                        tracing::warn!(%error, "reading Seldon's topics failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let request_id = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|header| header.key.eq_ignore_ascii_case("x-request-id"))
                        .and_then(|header| header.value)
                        .and_then(|value| std::str::from_utf8(value).ok())
                        .map(str::to_owned)
                });
                let position = Position {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                };
                adapter.receive(
                    message.topic(),
                    request_id.as_deref(),
                    message.payload().unwrap_or_default(),
                    message.timestamp().to_millis(),
                    Some(position),
                );
            }
        }
    }
    commit(&consumer, CommitMode::Sync);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use detectors::spec::Task;
    use serde_json::Value;

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/seldon")
    }

    fn adapter() -> (
        SeldonAdapter,
        tokio::sync::mpsc::Receiver<crate::log::LoggedEvent>,
        Telemetry,
    ) {
        let telemetry = Telemetry::default();
        let (log, events) = InferenceLog::bounded(64, telemetry.clone());
        let model = SeldonModel {
            seldon_model: "churn".into(),
            model: "churn".into(),
            features: vec!["usage".into(), "tenure".into(), "tickets".into()],
            layout: InputLayout::Columns { tensor: None },
            outputs: OutputMapping {
                task: Task::Classification,
                probabilities: Some("predict_proba".into()),
                label: None,
                classes: vec!["no".into(), "yes".into()],
            },
            version: Some("fallback".into()),
        };
        let adapter = SeldonAdapter::new(
            "seldon-mesh".into(),
            vec![model],
            100,
            Duration::from_secs(60),
            log,
            telemetry.clone(),
        );
        (adapter, events, telemetry)
    }

    #[test]
    fn recorded_messages_become_the_expected_prediction_events_and_offsets_wait_for_open_exchanges()
    {
        let (adapter, mut events, telemetry) = adapter();
        assert_eq!(
            adapter.topics(),
            [
                "seldon.seldon-mesh.model.churn.inputs",
                "seldon.seldon-mesh.model.churn.outputs"
            ]
        );
        let messages: Vec<Value> = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("messages.json")).unwrap(),
        )
        .unwrap();
        let mut offsets: BTreeMap<String, i64> = BTreeMap::new();
        let mut outcomes = Vec::new();
        for message in &messages {
            let topic = format!(
                "seldon.seldon-mesh.model.churn.{}",
                message["kind"].as_str().unwrap()
            );
            let payload =
                std::fs::read(fixtures().join(message["file"].as_str().unwrap())).unwrap();
            let offset = offsets.entry(topic.clone()).or_default();
            let position = Position {
                topic: topic.clone(),
                partition: 0,
                offset: *offset,
            };
            *offset += 1;
            outcomes.push(adapter.receive(
                &topic,
                message["request_id"].as_str(),
                &payload,
                message["timestamp"].as_i64(),
                Some(position),
            ));
        }
        assert_eq!(
            outcomes,
            ["waiting", "joined", "waiting", "joined", "waiting", "joined", "waiting"]
        );
        let expected: Vec<Value> = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("expected.json")).unwrap(),
        )
        .unwrap();
        crate::log::assert_logged_as_expected(&mut events, &expected);
        assert_eq!(telemetry.adapter_events_total("seldon", "joined"), 3);
        // sd-0004's request (inputs offset 3) is still open: inputs commit
        // stops below it; every output is done.
        let mut committable = adapter.committable();
        committable.sort();
        assert_eq!(
            committable,
            [
                ("seldon.seldon-mesh.model.churn.inputs".to_owned(), 0, 3),
                ("seldon.seldon-mesh.model.churn.outputs".to_owned(), 0, 3)
            ]
        );
        assert_eq!(adapter.waiting(), 1);
    }

    #[test]
    fn a_redelivered_half_stays_open_and_a_message_without_id_does_not_hold_the_commit() {
        let (adapter, _events, telemetry) = adapter();
        let topic = "seldon.seldon-mesh.model.churn.inputs";
        let payload = std::fs::read(fixtures().join("sd-0004.inputs.pb")).unwrap();
        let at = |offset| {
            Some(Position {
                topic: topic.into(),
                partition: 0,
                offset,
            })
        };
        assert_eq!(
            adapter.receive(topic, Some("x"), &payload, None, at(0)),
            "waiting"
        );
        // The same request again: the newer copy waits, the older is done.
        assert_eq!(
            adapter.receive(topic, Some("x"), &payload, None, at(1)),
            "duplicate"
        );
        assert_eq!(adapter.committable(), [(topic.to_owned(), 0, 1)]);
        // A message without a request id is done with at once; the commit
        // still stops below the waiting one.
        assert_eq!(
            adapter.receive(topic, None, &payload, None, at(2)),
            "undecodable"
        );
        assert_eq!(adapter.committable(), [(topic.to_owned(), 0, 1)]);
        assert_eq!(telemetry.adapter_events_total("seldon", "duplicate"), 1);
    }

    #[test]
    fn raw_contents_of_every_width_decode() {
        let floats: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            raw_data(Datatype::Fp32, &floats).unwrap(),
            TensorData::Numbers(vec![1.5, -2.25])
        );
        let ints: Vec<u8> = [-3i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            raw_data(Datatype::Int64, &ints).unwrap(),
            TensorData::Numbers(vec![-3.0, 7.0])
        );
        // FP16: 1.0 is 0x3c00, -2.0 is 0xc000, 0.5 is 0x3800.
        let halves: Vec<u8> = [0x3c00u16, 0xc000, 0x3800]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            raw_data(Datatype::Fp16, &halves).unwrap(),
            TensorData::Numbers(vec![1.0, -2.0, 0.5])
        );
        let mut strings = Vec::new();
        for text in ["DE", "", "Zürich"] {
            strings.extend((text.len() as u32).to_le_bytes());
            strings.extend(text.as_bytes());
        }
        assert_eq!(
            raw_data(Datatype::Bytes, &strings).unwrap(),
            TensorData::Text(vec!["DE".into(), "".into(), "Zürich".into()])
        );
        assert!(raw_data(Datatype::Fp64, &[0; 7]).is_err());
        assert!(raw_data(Datatype::Bytes, &[9, 0, 0, 0, b'a']).is_err());
        assert!(decode_request(b"\xff\xff").is_err());
    }
}
