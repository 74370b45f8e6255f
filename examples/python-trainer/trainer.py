"""A retraining service for Tidewatch, written the way most teams write
theirs: scikit-learn, skl2onnx and the mlflow client.

    pip install -r requirements.txt
    export TIDEWATCH_API_TOKEN=...            # Tidewatch's [http] token
    export TIDEWATCH_RETRAIN_SECRET=...       # optional: [alerts.retrain] secret_env's value
    python trainer.py --listen 127.0.0.1:8090 --tidewatch http://127.0.0.1:8080 \
        --brokers 127.0.0.1:9092 --ack-topic tidewatch.retrain.acks --models-dir ./models

Tidewatch POSTs each `io.tidewatch.retrain.requested` CloudEvent to
`[alerts.retrain] url` (here: http://127.0.0.1:8090/retrain). For each
request this service

1. reads the labelled rows of the request's `train_window` from
   Tidewatch (`GET /api/v1/models/{model}/training-data`, waiting for
   labels until it has --min-rows of them);
2. trains a LogisticRegression on the numeric features, in the order
   Tidewatch configured them (the `Tidewatch-Features` header);
3. exports it to ONNX with skl2onnx (zipmap off: a `label` and a
   `probabilities` tensor, which the gateway runs in process with tract)
   and writes the training rows with the new model's own outputs as
   `training.jsonl`, the new version's reference;
4. registers the version in Tidewatch's registry with the mlflow client
   (source = the ONNX file; tags `tidewatch.reference`,
   `tidewatch.runtime`, `tidewatch.retrain_request`, `tidewatch.train_window`)
   and sets the `challenger` alias;
5. acknowledges the request on the bus: `io.tidewatch.retrain.completed`
   (or `.failed` with the reason) on --ack-topic, which clears the
   monitor's debounce and goes on Tidewatch's timeline.

A request is answered once: one already registered (found by its
`tidewatch.retrain_request` tag) is acknowledged again, not retrained.
Requests are taken in order by one worker thread; the webhook answers
202 as soon as the request is queued.
"""

import argparse
import datetime
import hashlib
import hmac
import json
import os
import queue
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from confluent_kafka import Producer
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

REQUEST_TAG = "tidewatch.retrain_request"
WINDOW_TAG = "tidewatch.train_window"


def verify(secret, headers, body):
    """Tidewatch's webhook signature: `v1=` + hex HMAC-SHA256 of
    `"{timestamp}.{body}"`, the timestamp within five minutes."""
    timestamp = headers.get("X-Tidewatch-Timestamp", "")
    signature = headers.get("X-Tidewatch-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
        return False
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("v1=" + expected, signature)


class Trainer:
    def __init__(self, args):
        self.args = args
        self.token = os.environ["TIDEWATCH_API_TOKEN"]
        # The mlflow client sends MLFLOW_TRACKING_TOKEN as a bearer token.
        os.environ["MLFLOW_TRACKING_TOKEN"] = self.token
        self.registry = MlflowClient(tracking_uri=args.tidewatch, registry_uri=args.tidewatch)
        self.producer = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True})

    def training_rows(self, request):
        """The labelled rows and the configured feature order."""
        window = request["data"]["train_window"]
        query = urllib.parse.urlencode(
            {"from": window["start_ms"], "to": window["end_ms"], "version": request["data"]["version"]}
        )
        url = f"{self.args.tidewatch}/api/v1/models/{request['data']['model']}/training-data?{query}"
        call = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(call, timeout=30) as answer:
            features = answer.headers["Tidewatch-Features"].split(",")
            rows = [json.loads(line) for line in answer.read().decode().splitlines() if line]
        return rows, features

    def registered(self, model, request_id):
        found = self.registry.search_model_versions(
            f"name = '{model}' and tags.`{REQUEST_TAG}` = '{request_id}'"
        )
        return found[0].version if found else None

    def answer(self, request):
        data = request["data"]
        model, request_id = data["model"], request["id"]
        version = self.registered(model, request_id)
        rows = 0
        if version is None:
            deadline = time.time() + self.args.label_wait
            while True:
                records, features = self.training_rows(request)
                if len(records) >= self.args.min_rows:
                    break
                if time.time() > deadline:
                    raise RuntimeError(
                        f"{len(records)} labelled rows in the training window, {self.args.min_rows} needed"
                    )
                time.sleep(1)
            numeric = [f for f in features if all(isinstance(r.get(f), (int, float)) for r in records)]
            x = np.array([[float(r[f]) for f in numeric] for r in records], dtype=np.float64)
            y = np.array([str(r["actual.label"]) for r in records])
            classifier = LogisticRegression(max_iter=2000).fit(x, y)
            directory = os.path.abspath(
                os.path.join(self.args.models_dir, model, request_id.replace(":", "_"))
            )
            os.makedirs(directory, exist_ok=True)
            onx = to_onnx(
                classifier,
                initial_types=[("float_input", FloatTensorType([None, len(numeric)]))],
                options={id(classifier): {"zipmap": False}},
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
            model_path = os.path.join(directory, "model.onnx")
            with open(model_path, "wb") as f:
                f.write(onx.SerializeToString())
            # The reference: the rows with the new model's own outputs.
            probabilities = classifier.predict_proba(x)
            labels = classifier.predict(x)
            data_path = os.path.join(directory, "training.jsonl")
            with open(data_path, "w") as f:
                for record, p, label in zip(records, probabilities, labels):
                    row = {k: v for k, v in record.items() if not k.startswith("prediction.")}
                    if len(classifier.classes_) == 2:
                        row["prediction.score"] = float(p[1])
                    row["prediction.class"] = str(label)
                    f.write(json.dumps(row) + "\n")
            try:
                self.registry.create_registered_model(model)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = self.registry.create_model_version(
                model,
                f"file://{model_path}",
                tags={
                    "tidewatch.reference": f"file://{data_path}",
                    "tidewatch.runtime": "onnx",
                    REQUEST_TAG: request_id,
                    WINDOW_TAG: f"{data['train_window']['start_ms']}/{data['train_window']['end_ms']}",
                },
                description=f"scikit-learn LogisticRegression on {len(records)} labelled rows, "
                f"answering retrain request {request_id}",
            ).version
            rows = len(records)
        self.registry.set_registered_model_alias(model, "challenger", version)
        return {"version": str(version), "rows": rows, "source": "examples/python-trainer"}

    def acknowledge(self, request, outcome, reason=None):
        data = request["data"]
        kind = "completed" if reason is None else "failed"
        event = {
            "specversion": "1.0",
            "type": f"io.tidewatch.retrain.{kind}",
            "source": "examples/python-trainer",
            "id": f"{request['id']}-{kind}",
            # Milliseconds, as Tidewatch's own events: with whole seconds an
            # acknowledgement could look older than its request.
            "time": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "subject": f"{data['model']}/{data['version']}",
            "datacontenttype": "application/json",
            "data": {
                "request_id": request["id"],
                "model": data["model"],
                "trained_from": data["version"],
                "train_window": data["train_window"],
                **(outcome if reason is None else {"version": data["version"], "reason": reason}),
            },
        }
        self.producer.produce(
            self.args.ack_topic,
            key=data["model"],
            value=json.dumps(event),
            headers={"content-type": "application/cloudevents+json"},
        )
        self.producer.flush(30)

    def run(self, requests):
        while True:
            request = requests.get()
            try:
                outcome = self.answer(request)
                self.acknowledge(request, outcome)
                print(f"answered {request['id']}: version {outcome['version']}", flush=True)
            except Exception as error:  # the reason goes back to Tidewatch
                print(f"request {request['id']} failed: {error}", flush=True)
                self.acknowledge(request, None, reason=str(error))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8090")
    parser.add_argument("--tidewatch", default="http://127.0.0.1:8080")
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--ack-topic", default="tidewatch.retrain.acks")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--min-rows", type=int, default=200)
    parser.add_argument("--label-wait", type=float, default=3600)
    args = parser.parse_args()
    secret = os.environ.get("TIDEWATCH_RETRAIN_SECRET", "").encode()
    requests = queue.Queue(maxsize=1000)
    trainer = Trainer(args)
    threading.Thread(target=trainer.run, args=(requests,), daemon=True).start()

    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if secret and not verify(secret, self.headers, body):
                self.send_response(401)
                self.end_headers()
                return
            try:
                event = json.loads(body)
                assert event["type"] == "io.tidewatch.retrain.requested"
            except (ValueError, KeyError, AssertionError):
                self.send_response(400)
                self.end_headers()
                return
            try:
                requests.put_nowait(event)
            except queue.Full:
                # Tidewatch retries a 503 with backoff.
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(202)
            self.end_headers()

        def log_message(self, *_):
            pass

    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Webhook)
    print(f"listening on http://{args.listen}/retrain", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
