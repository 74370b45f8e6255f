"""Registers a webhook on an MLflow server with the official client.

    MLFLOW_WEBHOOK_SECRET=… python scripts/mlflow_webhook.py MLFLOW_URL WEBHOOK_URL

Used by the MLflow bridge test (tidewatch/tests/registry.rs): the webhook
sends every registry event Tidewatch's bridge follows to WEBHOOK_URL,
signed with the secret. Prints the webhook's id.
"""

import os
import sys

from mlflow import MlflowClient

EVENTS = [
    "registered_model.created",
    "model_version.created",
    "model_version_tag.set",
    "model_version_tag.deleted",
    "model_version_alias.created",
    "model_version_alias.deleted",
]


def main() -> None:
    mlflow_url, webhook_url = sys.argv[1], sys.argv[2]
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    webhook = client.create_webhook(
        name="tidewatch-bridge",
        url=webhook_url,
        events=EVENTS,
        secret=os.environ["MLFLOW_WEBHOOK_SECRET"],
    )
    print(webhook.webhook_id)


if __name__ == "__main__":
    main()
