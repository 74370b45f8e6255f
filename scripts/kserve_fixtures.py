"""Writes fixtures/kserve/: KServe payload-logger CloudEvents and the
prediction events Tidewatch must make of them.

    python3 scripts/kserve_fixtures.py

KServe's logger (mode: all) posts each request and each response of an
InferenceService as a binary-mode CloudEvent over HTTP: the body is the
payload as the model server received or answered it, the attributes are
headers (ce-specversion, ce-id shared by a request and its response, ce-type
org.kubeflow.serving.inference.request / .response, ce-source, ce-time, and
the extensions ce-inferenceservicename, ce-namespace, ce-component,
ce-endpoint). The exchanges below follow that format with bodies of both
protocol versions:

1. a V2 exchange as MLServer answers it (model_version in the response),
   from the default endpoint;
2. a V1 exchange (instances / predictions with class probabilities) from
   the canary endpoint, whose response is logged before its request;
3. a V2 request of two rows;
4. an event of an InferenceService that is not configured (ignored);
5. a request whose response never comes (waits, then expires).

exchanges.json lists the events in arrival order; expected.json the
prediction events (model, version, prediction_id, timestamp, features,
score, class) the adapter must produce, for a service configured with
versions = { canary = "8" } and classes ["no", "yes"].
"""

import json
import os

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "kserve")
FEATURES = ["usage", "tenure", "tickets"]


def event(kind, ce_id, time, body, service="churn", endpoint="default"):
    return {
        "headers": {
            "ce-specversion": "1.0",
            "ce-id": ce_id,
            "ce-type": f"org.kubeflow.serving.inference.{kind}",
            "ce-source": f"http://localhost:9081/",
            "ce-time": time,
            "ce-inferenceservicename": service,
            "ce-namespace": "ml",
            "ce-component": "predictor",
            "ce-endpoint": endpoint,
            "content-type": "application/json",
        },
        "body": json.dumps(body),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    events, expected = [], []

    # 1. V2, default endpoint, MLServer-style response.
    row = [0.7318205, 23.5, 1.25]
    p = [0.2391140729, 0.7608859271]
    events.append(event("request", "a1b2c3d4-0001", "2026-11-30T12:00:00.000Z", {
        "id": "a1b2c3d4-0001",
        "inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [row]}],
    }))
    events.append(event("response", "a1b2c3d4-0001", "2026-11-30T12:00:00.012Z", {
        "model_name": "churn", "model_version": "v7", "id": "a1b2c3d4-0001", "parameters": {},
        "outputs": [
            {"name": "predict_proba", "shape": [1, 2], "datatype": "FP64", "parameters": {"content_type": "np"}, "data": p},
            {"name": "predict", "shape": [1, 1], "datatype": "INT64", "parameters": {"content_type": "np"}, "data": [1]},
        ],
    }))
    expected.append({"model": "churn", "model_version": "v7", "prediction_id": "a1b2c3d4-0001",
                     "timestamp": 1796040000000, "latency_ms": 12.0,
                     "features": dict(zip(FEATURES, row)), "score": p[1], "class": "yes"})

    # 2. V1, canary endpoint, the response logged first.
    row = [-0.1250007, 41.0, 0.0]
    events.append(event("response", "e5f6-0002", "2026-11-30T12:00:01.030Z",
                        {"predictions": [[0.8123456789, 0.1876543211]]}, endpoint="canary"))
    events.append(event("request", "e5f6-0002", "2026-11-30T12:00:01.000Z",
                        {"instances": [row]}, endpoint="canary"))
    expected.append({"model": "churn", "model_version": "8", "prediction_id": "e5f6-0002",
                     "timestamp": 1796040001000, "latency_ms": 30.0,
                     "features": dict(zip(FEATURES, row)), "score": 0.1876543211, "class": "no"})

    # 3. V2, two rows.
    rows = [[1.5, 2.0, 3.0], [0.3333333333333333, 59.5, 4.75]]
    probabilities = [[0.45, 0.55], [0.9, 0.1]]
    events.append(event("request", "multi-0003", "2026-11-30T12:00:02.000Z", {
        "inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP64", "data": rows}],
    }))
    events.append(event("response", "multi-0003", "2026-11-30T12:00:02.004Z", {
        "model_name": "churn", "model_version": "v7",
        "outputs": [{"name": "predict_proba", "shape": [2, 2], "datatype": "FP64", "data": probabilities}],
    }))
    for i, (r, pr) in enumerate(zip(rows, probabilities)):
        expected.append({"model": "churn", "model_version": "v7", "prediction_id": f"multi-0003/{i}",
                         "timestamp": 1796040002000, "latency_ms": 4.0,
                         "features": dict(zip(FEATURES, r)), "score": pr[1],
                         "class": "yes" if pr[1] > pr[0] else "no"})

    # 4. Not a configured service.
    events.append(event("request", "other-0004", "2026-11-30T12:00:03.000Z",
                        {"instances": [[1, 2, 3]]}, service="fraud"))

    # 5. A request whose response never comes.
    events.append(event("request", "lost-0005", "2026-11-30T12:00:04.000Z",
                        {"instances": [[1, 2, 3]]}))

    with open(os.path.join(OUT, "exchanges.json"), "w") as f:
        json.dump(events, f, indent=1)
        f.write("\n")
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
