"""Drives Tidewatch's model registry with the official mlflow client.

    MLFLOW_TRACKING_TOKEN=… TIDEWATCH_TEST_TRAINING_DATA=train.csv \
        python scripts/mlflow_client.py http://127.0.0.1:PORT

Run by the registry integration test (tidewatch/tests/registry.rs) with the
Python of the mlflow virtualenv scripts/test.sh installs. Every call is one
`MlflowClient` makes unchanged against an MLflow server; the script prints
one JSON document of what the client saw, which the test checks (and
compares with the registry's own state and events).
"""

import json
import os
import sys
import threading

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException


def version_dict(mv):
    return {
        "name": mv.name,
        "version": str(mv.version),
        "source": mv.source,
        "run_id": mv.run_id,
        "status": mv.status,
        "current_stage": mv.current_stage,
        "description": mv.description,
        "tags": dict(mv.tags),
        "aliases": sorted(mv.aliases),
    }


def error_code(call):
    try:
        call()
    except MlflowException as error:
        return error.error_code
    return None


def main() -> None:
    uri = sys.argv[1]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    seen = {}

    model = client.create_registered_model(
        "churn", tags={"team": "growth"}, description="Churn classifier"
    )
    seen["created"] = {"name": model.name, "tags": dict(model.tags), "description": model.description}
    v1 = client.create_model_version(
        "churn",
        source="s3://models/churn/1",
        run_id="3f1c2a9e7b5d4c1a",
        tags={"tidewatch.reference": os.environ["TIDEWATCH_TEST_TRAINING_DATA"], "note": "first try"},
        description="first",
    )
    v2 = client.create_model_version("churn", source="s3://models/churn/2", run_id="9a8b7c6d5e4f3a2b")
    seen["versions"] = [version_dict(v1), version_dict(v2)]

    client.set_registered_model_alias("churn", "champion", v1.version)
    client.set_registered_model_alias("churn", "challenger", v2.version)
    seen["champion"] = version_dict(client.get_model_version_by_alias("churn", "champion"))
    seen["aliases_after_set"] = {
        a: v for a, v in client.get_registered_model("churn").aliases.items()
    }
    # Moving an alias, then deleting one.
    client.set_registered_model_alias("churn", "champion", v2.version)
    client.delete_registered_model_alias("churn", "challenger")
    seen["aliases_after_move"] = {
        a: v for a, v in client.get_registered_model("churn").aliases.items()
    }

    client.set_model_version_tag("churn", v2.version, "validated", "yes")
    client.delete_model_version_tag("churn", v1.version, "note")
    client.update_registered_model("churn", description="Churn classifier, weekly retrain")
    client.update_model_version("churn", v1.version, description="first, superseded")
    client.transition_model_version_stage("churn", v1.version, "Production")
    client.transition_model_version_stage(
        "churn", v2.version, "Production", archive_existing_versions=True
    )
    seen["v1_after"] = version_dict(client.get_model_version("churn", v1.version))
    seen["v2_after"] = version_dict(client.get_model_version("churn", v2.version))
    seen["latest_production"] = [
        str(v.version) for v in client.get_latest_versions("churn", stages=["Production"])
    ]
    seen["download_uri"] = client.get_model_version_download_uri("churn", v2.version)

    client.create_registered_model("fraud")
    client.create_model_version("fraud", source="s3://models/fraud/1", run_id="1111")
    seen["search_models"] = [m.name for m in client.search_registered_models(filter_string="name LIKE 'ch%'")]
    seen["search_all_models"] = [m.name for m in client.search_registered_models(order_by=["name DESC"])]
    seen["search_versions"] = [
        (v.name, str(v.version))
        for v in client.search_model_versions("name='churn'", order_by=["version_number ASC"])
    ]
    seen["search_by_run"] = [
        (v.name, str(v.version)) for v in client.search_model_versions("run_id = '1111'")
    ]
    seen["search_by_tag"] = [
        (v.name, str(v.version)) for v in client.search_model_versions("tags.validated = 'yes'")
    ]
    # Paging: one result per page, followed to the end.
    pages, token = [], None
    while True:
        page = client.search_registered_models(max_results=1, page_token=token)
        pages.extend(m.name for m in page)
        token = page.token
        if not token:
            break
    seen["paged_models"] = pages

    # Concurrent creates of one model's versions: distinct numbers.
    numbers, lock = [], threading.Lock()

    def create(i):
        mv = MlflowClient(tracking_uri=uri, registry_uri=uri).create_model_version(
            "fraud", source=f"s3://models/fraud/c{i}", run_id=f"concurrent{i}"
        )
        with lock:
            numbers.append(int(mv.version))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen["concurrent_versions"] = sorted(numbers)

    client.rename_registered_model("fraud", "fraud-detector")
    seen["renamed_versions"] = len(client.search_model_versions("name='fraud-detector'"))
    client.delete_model_version("fraud-detector", "1")
    seen["after_delete_version"] = sorted(
        int(v.version) for v in client.search_model_versions("name='fraud-detector'")
    )
    client.delete_registered_model("fraud-detector")

    seen["errors"] = {
        "missing_model": error_code(lambda: client.get_registered_model("absent")),
        "duplicate_model": error_code(lambda: client.create_registered_model("churn")),
        "bad_name": error_code(lambda: client.create_registered_model("a/b")),
        "missing_version": error_code(lambda: client.get_model_version("churn", "99")),
        "missing_alias": error_code(lambda: client.get_model_version_by_alias("churn", "absent")),
        "reserved_alias": error_code(
            lambda: client.set_registered_model_alias("churn", "latest", "1")
        ),
        "deleted_model": error_code(lambda: client.get_registered_model("fraud-detector")),
    }
    token = os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    seen["write_without_token"] = error_code(lambda: client.create_registered_model("anonymous"))
    seen["read_without_token"] = client.get_registered_model("churn").name
    if token is not None:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    print(json.dumps(seen, sort_keys=True))


if __name__ == "__main__":
    main()
