"""Writes the scikit-learn model the integration tests serve with MLServer.

    python scripts/mlserver_model.py OUT_DIR HTTP_PORT GRPC_PORT METRICS_PORT

Trains a LogisticRegression on a fixed synthetic data set (seed 7) with the
features usage, tenure and tickets, and writes into OUT_DIR:

- settings.json: MLServer on 127.0.0.1 with the given ports, no worker pool;
- gw/model.joblib and gw/model-settings.json: the model as MLServer's
  scikit-learn runtime serves it (name "gw", version "v1");
- gw-linear.json: the same coefficients as a tidewatch.linear.v1 document,
  so that the tests can check that MLServer behind the gateway and
  Tidewatch's in-process runtime answer the same probabilities.

Run by scripts/test.sh with the MLServer virtualenv's Python; trained at
test time rather than committed because a joblib file is tied to the
scikit-learn version that wrote it.
"""

import json
import os
import sys

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

FEATURES = ["usage", "tenure", "tickets"]


def main() -> None:
    out_dir, http_port, grpc_port, metrics_port = sys.argv[1], *map(int, sys.argv[2:5])
    rng = np.random.RandomState(7)
    n = 2000
    x = np.column_stack(
        [rng.normal(0.3, 1.1, n), rng.uniform(0.5, 60.5, n), rng.gamma(2.0, 0.9, n)]
    )
    margin = 0.9 * x[:, 0] - 0.04 * x[:, 1] + 0.7 * x[:, 2] - 0.5
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-margin))).astype(int)
    model = LogisticRegression(max_iter=1000).fit(x, y)

    model_dir = os.path.join(out_dir, "gw")
    os.makedirs(model_dir, exist_ok=True)
    joblib.dump(model, os.path.join(model_dir, "model.joblib"))
    with open(os.path.join(model_dir, "model-settings.json"), "w") as f:
        json.dump(
            {
                "name": "gw",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "v1"},
            },
            f,
        )
    with open(os.path.join(out_dir, "settings.json"), "w") as f:
        json.dump(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": 0,
            },
            f,
        )
    with open(os.path.join(out_dir, "gw-linear.json"), "w") as f:
        json.dump(
            {
                "format": "tidewatch.linear.v1",
                "task": "classification",
                "features": FEATURES,
                "classes": [str(c) for c in model.classes_],
                "coefficients": model.coef_.tolist(),
                "intercepts": model.intercept_.tolist(),
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
