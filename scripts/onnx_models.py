"""Writes the ONNX models the serving tests run in process, and what
scikit-learn and ONNX Runtime answer for them.

    python -m venv venv && venv/bin/pip install scikit-learn==1.9.1 skl2onnx==1.20.0 \
        onnx==1.23.2 onnxruntime==1.32.0 numpy
    venv/bin/python scripts/onnx_models.py fixtures/onnx

Trains on the data set of scripts/mlserver_model.py (seed 7; the features
usage, tenure and tickets) and writes into OUT_DIR:

- gw-logistic.onnx: a LogisticRegression with the classes "no" and "yes"
  (one ai.onnx.ml LinearClassifier node, string labels);
- gw-forest.onnx: a RandomForestClassifier, 25 trees of depth at most 6,
  classes 0 and 1 (one TreeEnsembleClassifier node, integer labels);
- gw-regression.onnx: a LinearRegression predicting tenure-adjusted usage
  (one LinearRegressor node);
- expected.json: 64 input rows at full precision (two of them outside the
  training range) and, for each model, the outputs ONNX Runtime computes
  (the reference the tests compare tract with) and scikit-learn's own
  answers.

Every model is exported with skl2onnx, float32 inputs named
"float_input" of shape [None, 3], and zipmap=False so that a classifier
answers a "label" tensor and a "probabilities" tensor [N, C] rather than a
sequence of maps. Committed (the tests do not need Python); rerun this
script to regenerate them.
"""

import json
import os
import sys

import numpy as np
import onnxruntime
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

FEATURES = ["usage", "tenure", "tickets"]


def training_data():
    rng = np.random.RandomState(7)
    n = 2000
    x = np.column_stack(
        [rng.normal(0.3, 1.1, n), rng.uniform(0.5, 60.5, n), rng.gamma(2.0, 0.9, n)]
    )
    margin = 0.9 * x[:, 0] - 0.04 * x[:, 1] + 0.7 * x[:, 2] - 0.5
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-margin))).astype(int)
    return x, y


def export(model, path, classifier):
    options = {id(model): {"zipmap": False}} if classifier else None
    onx = to_onnx(
        model,
        initial_types=[("float_input", FloatTensorType([None, len(FEATURES)]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def as_list(array):
    array = np.asarray(array)
    if array.dtype.kind in "fc":
        return [float(v) for v in array.ravel()]
    if array.dtype.kind in "iu":
        return [int(v) for v in array.ravel()]
    return [str(v) for v in array.ravel()]


def main() -> None:
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    x, y = training_data()

    rng = np.random.RandomState(11)
    rows = np.column_stack(
        [rng.normal(0.3, 1.1, 62), rng.uniform(0.5, 60.5, 62), rng.gamma(2.0, 0.9, 62)]
    )
    rows = np.vstack([rows, [[-7.25, 90.5, 0.0], [6.125, -3.0, 14.75]]])
    rows32 = rows.astype(np.float32)

    labels = np.where(y == 1, "yes", "no")
    logistic = LogisticRegression(max_iter=1000).fit(x, labels)
    forest = RandomForestClassifier(n_estimators=25, max_depth=6, random_state=3).fit(x, y)
    target = 2.0 * x[:, 0] - 0.05 * x[:, 1] + 0.3 * x[:, 2] + np.random.RandomState(5).normal(0, 0.2, len(x))
    regression = LinearRegression().fit(x, target)

    expected = {"features": FEATURES, "rows": [[float(v) for v in row] for row in rows], "models": {}}
    for name, model, classifier in [
        ("gw-logistic", logistic, True),
        ("gw-forest", forest, True),
        ("gw-regression", regression, False),
    ]:
        session = export(model, os.path.join(out_dir, f"{name}.onnx"), classifier)
        answers = session.run(None, {"float_input": rows32})
        outputs = {
            output.name: {"shape": list(answer.shape), "data": as_list(answer)}
            for output, answer in zip(session.get_outputs(), answers)
        }
        entry = {"onnxruntime": outputs}
        if classifier:
            entry["classes"] = as_list(model.classes_)
            entry["sklearn"] = {
                "label": as_list(model.predict(rows32)),
                "probabilities": as_list(model.predict_proba(rows32)),
            }
        else:
            entry["sklearn"] = {"prediction": as_list(model.predict(rows32))}
        expected["models"][name] = entry

    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
