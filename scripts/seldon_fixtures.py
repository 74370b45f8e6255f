"""Writes fixtures/seldon/: Seldon Core 2 request and response messages (the
Open Inference Protocol's protobuf ModelInferRequest / ModelInferResponse, as
Seldon writes them to seldon.<namespace>.model.<model>.inputs / .outputs)
and the prediction events Tidewatch must make of them.

    ~/.cache/tidewatch/mlserver-venv-1.7.1/bin/python scripts/seldon_fixtures.py

Encoded with the protocol's own generated classes as MLServer ships them
(mlserver.grpc.dataplane_pb2, package `inference`), in the virtualenv that
scripts/test.sh installs. Cases:

1. typed contents (fp64_contents), the response naming model_version "3";
2. raw contents (FP32 request, FP64 response, little-endian), the response
   first and without a version (the configured one, "fallback", applies);
3. a request of two rows, typed, response raw;
4. a request whose response never comes.

messages.json lists them in topic order ({kind: inputs|outputs,
request_id, timestamp, file}); expected.json the prediction events for a
model `churn` with features usage, tenure, tickets and classes no / yes.
"""

import json
import os
import struct

from mlserver.grpc import dataplane_pb2 as pb

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "seldon")
FEATURES = ["usage", "tenure", "tickets"]
T0 = 1796040000000  # 2026-11-30T12:00:00Z


def request(rows, raw_fp32=False):
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32" if raw_fp32 else "FP64",
                                                    shape=[len(rows), len(FEATURES)])
    message = pb.ModelInferRequest(model_name="churn")
    flat = [v for row in rows for v in row]
    if raw_fp32:
        message.inputs.append(tensor)
        message.raw_input_contents.append(struct.pack(f"<{len(flat)}f", *flat))
    else:
        tensor.contents.fp64_contents.extend(flat)
        message.inputs.append(tensor)
    return message


def response(probabilities, version, raw=False):
    tensor = pb.ModelInferResponse.InferOutputTensor(name="predict_proba", datatype="FP64",
                                                      shape=[len(probabilities), 2])
    message = pb.ModelInferResponse(model_name="churn_1", model_version=version)
    flat = [v for row in probabilities for v in row]
    if raw:
        message.outputs.append(tensor)
        message.raw_output_contents.append(struct.pack(f"<{len(flat)}d", *flat))
    else:
        tensor.contents.fp64_contents.extend(flat)
        message.outputs.append(tensor)
    return message


def main():
    os.makedirs(OUT, exist_ok=True)
    messages, expected = [], []

    def write(kind, request_id, timestamp, message):
        name = f"{request_id}.{kind}.pb"
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(message.SerializeToString())
        messages.append({"kind": kind, "request_id": request_id, "timestamp": timestamp, "file": name})

    def expect(request_id, version, timestamp, latency, row, probability):
        expected.append({"model": "churn", "model_version": version, "prediction_id": request_id,
                         "timestamp": timestamp, "latency_ms": latency,
                         "features": dict(zip(FEATURES, row)), "score": probability[1],
                         "class": "yes" if probability[1] > probability[0] else "no"})

    # 1. typed
    row, p = [0.7318205, 23.5, 1.25], [0.2391140729, 0.7608859271]
    write("inputs", "sd-0001", T0, request([row]))
    write("outputs", "sd-0001", T0 + 9, response([p], "3"))
    expect("sd-0001", "3", T0, 9.0, row, p)

    # 2. raw, response first, no version
    row, p = [0.5, 41.0, 0.25], [0.8123456789, 0.1876543211]  # exact in FP32
    write("outputs", "sd-0002", T0 + 1021, response([p], "", raw=True))
    write("inputs", "sd-0002", T0 + 1000, request([row], raw_fp32=True))
    expect("sd-0002", "fallback", T0 + 1000, 21.0, row, p)

    # 3. two rows
    rows = [[1.5, 2.0, 3.0], [0.3333333333333333, 59.5, 4.75]]
    ps = [[0.45, 0.55], [0.9, 0.1]]
    write("inputs", "sd-0003", T0 + 2000, request(rows))
    write("outputs", "sd-0003", T0 + 2004, response(ps, "3", raw=True))
    for i, (r, pr) in enumerate(zip(rows, ps)):
        expect(f"sd-0003/{i}", "3", T0 + 2000, 4.0, r, pr)

    # 4. no response
    write("inputs", "sd-0004", T0 + 3000, request([[1.0, 2.0, 3.0]]))

    with open(os.path.join(OUT, "messages.json"), "w") as f:
        json.dump(messages, f, indent=1)
        f.write("\n")
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
