"""Produce Tidewatch events to Kafka as `tidewatch.v1.Event` Protocol Buffers
messages, as a serving process logging in protobuf does.

The message classes are generated from events/schemas/tidewatch/v1/event.proto
with protoc (grpcio-tools) when the script starts. The events come from a
JSON-lines file in Tidewatch's JSON encoding; each is converted field by field
and sent keyed by its prediction_id. A line that cannot be converted (not
JSON, an RFC 3339 time that does not parse, a value of the wrong type) is sent
as it is, for the consumer to dead-letter.

    python produce.py --brokers 127.0.0.1:9092 --topic predictions events.jsonl

With --dump instead of --brokers/--topic, each message is written to standard
output in hexadecimal, one line per input line (a line sent as it is: empty).
"""

import argparse
import datetime
import importlib
import importlib.resources
import json
import pathlib
import sys
import tempfile

from confluent_kafka import Producer
from grpc_tools import protoc

SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "events" / "schemas"


def generated_module():
    out = tempfile.mkdtemp(prefix="tidewatch-proto-")
    include = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{SCHEMAS}",
            f"-I{include}",
            f"--python_out={out}",
            str(SCHEMAS / "tidewatch" / "v1" / "event.proto"),
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed on {SCHEMAS}/tidewatch/v1/event.proto")
    sys.path.insert(0, out)
    return importlib.import_module("tidewatch.v1.event_pb2")


def millis(timestamp):
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, str)):
        raise TypeError("timestamp")
    if isinstance(timestamp, int):
        return timestamp
    parsed = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("an RFC 3339 time has an offset")
    return round(parsed.timestamp() * 1000)


def text(value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError("a string or a number")
    return str(value)


def to_message(pb, doc):
    if not isinstance(doc, dict):
        raise TypeError("an object")
    event = pb.Event()
    if "schema" in doc:
        event.schema = doc["schema"]
    event.model = doc["model"]
    event.model_version = text(doc["model_version"])
    if doc.get("prediction_id") is not None:
        event.prediction_id = text(doc["prediction_id"])
    event.timestamp_ms = millis(doc["timestamp"])
    for name, value in (doc.get("features") or {}).items():
        feature = event.features.add()
        feature.name = name
        if value is None:
            pass
        elif isinstance(value, bool):
            feature.flag = value
        elif isinstance(value, (int, float)):
            feature.number = float(value)
        elif isinstance(value, str):
            feature.text = value
        else:
            raise TypeError(f"feature {name}")
    prediction = doc.get("prediction")
    if prediction is not None:
        event.prediction.SetInParent()
        if "score" in prediction:
            event.prediction.score = float(prediction["score"])
        if "class" in prediction:
            event.prediction.class_label = text(prediction["class"])
        for label, probability in (prediction.get("probabilities") or {}).items():
            event.prediction.probabilities[label] = float(probability)
    if "latency_ms" in doc:
        event.latency_ms = float(doc["latency_ms"])
    for key, value in (doc.get("segments") or {}).items():
        event.segments[key] = text(value)
    if "label" in doc:
        label = doc["label"]
        if isinstance(label, bool):
            event.label.flag = label
        elif isinstance(label, (int, float)):
            event.label.number = float(label)
        else:
            event.label.class_label = text(label)
    if "error" in doc:
        event.error = doc["error"]
    return event.SerializeToString()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=pathlib.Path)
    parser.add_argument("--brokers")
    parser.add_argument("--topic")
    parser.add_argument("--dump", action="store_true")
    args = parser.parse_args()
    pb = generated_module()
    if args.dump:
        for line in args.file.open("rb"):
            try:
                print(to_message(pb, json.loads(line)).hex())
            except (ValueError, TypeError, KeyError, AttributeError):
                print()
        return
    if not args.brokers or not args.topic:
        parser.error("--brokers and --topic are required (or --dump)")
    producer = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True})
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(error)

    sent = converted = 0
    with args.file.open("rb") as lines:
        for number, line in enumerate(lines):
            line = line.strip()
            if not line:
                continue
            key = str(number)
            try:
                doc = json.loads(line)
                payload = to_message(pb, doc)
                key = str(doc.get("prediction_id", number))
                converted += 1
            except (ValueError, TypeError, KeyError, AttributeError):
                payload = line
            while True:
                try:
                    producer.produce(args.topic, value=payload, key=key, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            sent += 1
    remaining = producer.flush(60)
    if remaining or failures:
        sys.exit(f"{remaining} messages undelivered, {len(failures)} failed: {failures[:3]}")
    print(f"delivered {sent} messages to {args.topic} ({converted} as tidewatch.v1.Event)")


if __name__ == "__main__":
    main()
