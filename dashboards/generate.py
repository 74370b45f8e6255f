#!/usr/bin/env python3
"""Writes Tidewatch's Grafana dashboards (dashboards/*.json) for the official
ClickHouse data source plugin (grafana-clickhouse-datasource).

The JSON files are committed; edit this script and run it again
(`python3 dashboards/generate.py`) rather than editing them by hand. The
dashboard test (`tidewatch/tests/dashboards.rs`) validates their structure
and runs every query against a real ClickHouse loaded with test data.

The SQL sticks to what every ClickHouse release since 18.16 reads: no
toStartOfInterval (so no $__timeInterval; buckets are
intDiv(toUInt32(at), $__interval_s) * $__interval_s), no window functions,
and no alias that shadows a column used in its own expression.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
DS = {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}
SERIES = "model = '${model}' AND model_version = '${version}' AND segment = '${segment}'"
MODELS = "model IN (${model:singlequote}) AND model_version IN (${version:singlequote}) AND segment = '${segment}'"
DRIFT_SERIES = "feature NOT IN ('operations', 'quality', 'estimated_quality', 'multivariate')"


def variable_query(name, label, sql, multi=False, include_all=False, default=None):
    current = {"selected": True, "text": default, "value": default} if default else {}
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": sql,
        "definition": sql,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "current": current,
        "hide": 0,
    }


def variables(feature=False, score=False, models_multi=False):
    result = [
        {
            "name": "datasource",
            "label": "ClickHouse",
            "type": "datasource",
            "query": "grafana-clickhouse-datasource",
            "current": {"selected": True, "text": "Tidewatch ClickHouse", "value": "tidewatch-clickhouse"},
            "hide": 0,
            "refresh": 1,
        },
        variable_query("model", "Model", "SELECT DISTINCT model FROM window_metrics ORDER BY model",
                       multi=models_multi, include_all=models_multi),
        variable_query(
            "version",
            "Version",
            "SELECT DISTINCT model_version FROM window_metrics WHERE model IN (${model:singlequote}) ORDER BY model_version",
            multi=models_multi,
            include_all=models_multi,
        ),
        variable_query(
            "segment",
            "Segment",
            "SELECT DISTINCT segment FROM window_metrics WHERE model IN (${model:singlequote}) ORDER BY segment",
            default="all",
        ),
    ]
    if feature:
        result.append(
            variable_query(
                "feature",
                "Series",
                "SELECT DISTINCT feature FROM window_metrics WHERE model = '${model}' AND "
                + DRIFT_SERIES + " ORDER BY feature",
                multi=True,
                include_all=True,
            )
        )
    if score:
        options = [
            ("PSI", "psi"),
            ("Jensen-Shannon distance", "js_distance"),
            ("Hellinger distance", "hellinger"),
            ("Wasserstein / reference std", "wasserstein_normalized"),
            ("KS statistic", "ks_statistic"),
        ]
        result.append(
            {
                "name": "score",
                "label": "Drift score",
                "type": "custom",
                "query": ",".join(f"{label} : {value}" for label, value in options),
                "options": [
                    {"selected": value == "psi", "text": label, "value": value} for label, value in options
                ],
                "current": {"selected": True, "text": "PSI", "value": "psi"},
                "hide": 0,
            }
        )
    return result


def annotations(all_models=False):
    where = "model IN (${model:singlequote})" if all_models else "model = '${model}'"
    sql = (
        "SELECT window_start AS time, window_end AS timeEnd, summary AS text, "
        "concat(status, ',', severity, ',', rule) AS tags FROM alerts FINAL "
        f"WHERE $__timeFilter(window_start) AND status IN ('firing', 'resolved') AND {where} ORDER BY time"
    )
    versions_sql = (
        "SELECT time, multiIf("
        "kind = 'registered', concat('v', model_version, ' registered'), "
        "kind = 'reference_attached', concat('v', model_version, ' reference profile attached'), "
        "kind = 'alias_set', concat('v', model_version, ' is now ', alias), "
        "kind = 'trained', concat('v', model_version, ' trained by Tidewatch'), "
        "kind = 'promotion_decided', concat('promotion decided on v', model_version), "
        "concat('alias ', alias, ' deleted')) AS text, "
        "concat('version,', kind, if(alias = '', '', concat(',', alias))) AS tags "
        f"FROM version_events FINAL WHERE $__timeFilter(time) AND {where} ORDER BY time"
    )
    return {
        "list": [
            {
                "builtIn": 1,
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts",
                "type": "dashboard",
            },
            {
                "name": "Tidewatch alerts",
                "datasource": DS,
                "enable": True,
                "iconColor": "red",
                "target": {"refId": "Anno", "editorType": "sql", "format": 1, "queryType": "table", "rawSql": sql},
            },
            {
                "name": "Tidewatch versions",
                "datasource": DS,
                "enable": True,
                "iconColor": "blue",
                "target": {
                    "refId": "Versions",
                    "editorType": "sql",
                    "format": 1,
                    "queryType": "table",
                    "rawSql": versions_sql,
                },
            },
        ]
    }


class Layout:
    """Places panels left to right, 24 columns wide."""

    def __init__(self):
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def place(self, width, height):
        if self.x + width > 24:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        position = {"x": self.x, "y": self.y, "w": width, "h": height}
        self.x += width
        self.row_height = max(self.row_height, height)
        return position

    def panel(self, kind, title, targets, width=12, height=8, description="", **extra):
        panel = {
            "id": self.next_id,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self.place(width, height),
            "targets": targets,
        }
        panel.update(extra)
        self.next_id += 1
        return panel


def target(sql, ref="A", table=False):
    return {
        "refId": ref,
        "datasource": DS,
        "editorType": "sql",
        "queryType": "table" if table else "timeSeries",
        "format": 1 if table else 0,
        "rawSql": sql,
    }


def timeseries_options(unit=None, log=False, thresholds=None):
    defaults = {"custom": {"drawStyle": "line", "lineWidth": 2, "pointSize": 4, "showPoints": "always", "spanNulls": False}}
    if unit:
        defaults["unit"] = unit
    if log:
        defaults["custom"]["scaleDistribution"] = {"type": "log", "log": 10}
    overrides = []
    if thresholds:
        overrides.append(
            {
                "matcher": {"id": "byRegexp", "options": thresholds},
                "properties": [
                    {"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}},
                    {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
                    {"id": "custom.showPoints", "value": "never"},
                ],
            }
        )
    return {"fieldConfig": {"defaults": defaults, "overrides": overrides}, "options": {"legend": {"displayMode": "table", "placement": "right"}, "tooltip": {"mode": "multi"}}}


def dashboard(uid, title, description, panels, templating, annotation):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["tidewatch", "ml-monitoring"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-2d", "to": "now"},
        "templating": {"list": templating},
        "annotations": annotation,
        "links": [
            {"title": "Tidewatch", "type": "dashboards", "tags": ["tidewatch"], "asDropdown": True, "includeVars": True, "keepTime": True}
        ],
        "panels": panels,
    }


def overview():
    layout = Layout()
    where_models = f"{MODELS} AND $__timeFilter(window_start)"
    panels = [
        layout.panel(
            "table",
            "Models",
            [target(
                "SELECT model, model_version AS version, max(window_start) AS latest_window, "
                "uniqExact(window_start) AS windows FROM window_metrics FINAL "
                f"WHERE {where_models} GROUP BY model, model_version ORDER BY model, version",
                table=True,
            )],
            width=10,
            description="Every monitored model version with its latest finalized window.",
        ),
        layout.panel(
            "table",
            "Drifted series in the latest window",
            [target(
                "SELECT model, model_version AS version, window_start AS latest_window, "
                "countIf(drifted = 1) AS drifted_series, groupArrayIf(feature, drifted = 1) AS drifted_features "
                f"FROM window_metrics FINAL WHERE {MODELS} AND {DRIFT_SERIES} "
                "AND (model, model_version, window_start) IN (SELECT model, model_version, max(window_start) "
                f"FROM window_metrics FINAL WHERE {where_models} AND feature = 'operations' AND count > 0 "
                "GROUP BY model, model_version) "
                "GROUP BY model, model_version, window_start ORDER BY drifted_series DESC",
                table=True,
            )],
            width=14,
            description="Latest window with predictions; a series counts when its drift verdict (PSI by default) is set.",
        ),
        layout.panel(
            "timeseries",
            "Drifted series per window",
            [target(
                "SELECT window_start AS time, model, countIf(drifted = 1) AS drifted_series "
                f"FROM window_metrics FINAL WHERE {where_models} AND {DRIFT_SERIES} "
                "GROUP BY model, window_start ORDER BY time"
            )],
            **timeseries_options(),
        ),
        layout.panel(
            "timeseries",
            "Quality trend (accuracy; R² for regression)",
            [target(
                "SELECT window_start AS time, model, ifNull(accuracy, r2) AS quality "
                f"FROM window_metrics FINAL WHERE {where_models} AND feature = 'quality' ORDER BY time"
            )],
            **timeseries_options(unit="percentunit"),
        ),
        layout.panel(
            "table",
            "Open alerts",
            [target(
                "SELECT id, alert_model AS model, alert_rule AS rule, alert_severity AS severity, firing_since, "
                "last_summary AS summary FROM (SELECT id, argMax(status, window_start) AS last_status, "
                "min(window_start) AS firing_since, any(model) AS alert_model, any(rule) AS alert_rule, "
                "any(severity) AS alert_severity, argMax(summary, window_start) AS last_summary "
                "FROM alerts FINAL WHERE status IN ('firing', 'resolved') AND model IN (${model:singlequote}) "
                "GROUP BY id) WHERE last_status = 'firing' ORDER BY firing_since DESC",
                table=True,
            )],
            width=24,
            description="Alerts whose latest notification is not a resolution.",
        ),
    ]
    return dashboard(
        "tidewatch-overview",
        "Tidewatch · Overview",
        "Every model, its latest window, drifted series, quality trend and open alerts.",
        panels,
        variables(models_multi=True),
        annotations(all_models=True),
    )


def test_value(test, column):
    return f"{column}[indexOf(test_names, '{test}')]"


def feature_drift():
    layout = Layout()
    where = f"{SERIES} AND feature IN (${{feature:singlequote}}) AND $__timeFilter(window_start)"

    def score_panel(title, column, threshold_sql, width=12, log=False, description=""):
        return layout.panel(
            "timeseries",
            title,
            [
                target(f"SELECT window_start AS time, feature, {column} FROM window_metrics FINAL "
                       f"WHERE {where} AND {column} IS NOT NULL ORDER BY time, feature"),
                target(threshold_sql, ref="B"),
            ],
            width=width,
            description=description,
            **timeseries_options(log=log, thresholds="threshold|alpha"),
        )

    def test_threshold(test, name="threshold"):
        return (
            f"SELECT window_start AS time, max({test_value(test, 'test_thresholds')}) AS {name} "
            f"FROM window_metrics FINAL WHERE {where} AND has(test_names, '{test}') "
            "GROUP BY window_start ORDER BY time"
        )

    panels = [
        layout.panel(
            "heatmap",
            "Drift heatmap: ${score} per series and window",
            [target(
                "SELECT window_start AS time, feature, ${score} AS drift_score FROM window_metrics FINAL "
                f"WHERE {where} ORDER BY time, feature"
            )],
            width=24,
            height=10,
            description="One row per series, one column per window; colour is the chosen drift score.",
            options={
                "calculate": False,
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "YlOrRd", "steps": 64, "exponent": 0.5},
                "yAxis": {"axisPlacement": "left"},
                "rowsFrame": {"layout": "auto"},
                "tooltip": {"show": True, "yHistogram": False},
                "legend": {"show": True},
            },
        ),
        score_panel(
            "PSI (threshold dashed)",
            "psi",
            "SELECT window_start AS time, max(psi_threshold) AS threshold FROM window_metrics FINAL "
            f"WHERE {where} GROUP BY window_start ORDER BY time",
            description="Population stability index against the reference deciles.",
        ),
        score_panel(
            "Jensen-Shannon distance (threshold dashed)",
            "js_distance",
            test_threshold("jensen_shannon"),
        ),
        score_panel(
            "KS p-value (alpha dashed, corrected across series)",
            "ks_p_value",
            test_threshold("ks", name="alpha"),
            log=True,
        ),
        layout.panel(
            "timeseries",
            "KS statistic",
            [target(
                "SELECT window_start AS time, feature, ks_statistic FROM window_metrics FINAL "
                f"WHERE {where} AND ks_statistic IS NOT NULL ORDER BY time, feature"
            )],
            **timeseries_options(),
        ),
        layout.panel(
            "table",
            "Reference vs current quantiles (latest window per series)",
            [target(
                "SELECT feature, window_start AS latest_window, ref_p05, p05, ref_p25, p25, ref_p50, p50, "
                "ref_p75, p75, ref_p95, p95 FROM window_metrics FINAL "
                f"WHERE {SERIES} AND kind = 'numeric' AND feature IN (${{feature:singlequote}}) "
                "AND (feature, window_start) IN (SELECT feature, max(window_start) FROM window_metrics FINAL "
                f"WHERE {where} AND kind = 'numeric' AND count > 0 GROUP BY feature) ORDER BY feature",
                table=True,
            )],
            width=24,
            description="Reference quantiles come from the training profile; current ones from the window's sketch (1 % relative error).",
        ),
        layout.panel(
            "timeseries",
            "Missing rate",
            [target(
                "SELECT window_start AS time, feature, missing_rate FROM window_metrics FINAL "
                f"WHERE {where} ORDER BY time, feature"
            )],
            **timeseries_options(unit="percentunit"),
        ),
        layout.panel(
            "timeseries",
            "Values outside the reference range / unseen categories",
            [target(
                "SELECT window_start AS time, feature, ifNull(out_of_range, unseen_categories) AS outside_reference "
                f"FROM window_metrics FINAL WHERE {where} ORDER BY time, feature"
            )],
            **timeseries_options(),
        ),
        layout.panel(
            "timeseries",
            "Multivariate drift: mean reconstruction error (band dashed)",
            [target(
                "SELECT window_start AS time, mean AS reconstruction_error, reconstruction_lower AS lower, "
                "reconstruction_upper AS upper FROM window_metrics FINAL "
                f"WHERE {SERIES} AND $__timeFilter(window_start) AND feature = 'multivariate' "
                "AND mean IS NOT NULL ORDER BY time"
            )],
            width=24,
            description=(
                "Models with [models.multivariate]: the rows' mean error of reconstruction from the reference's "
                "principal components, flagged outside the reference rows' mean ± 3 standard errors of the "
                "window's size. It rises when the features stop moving together as in the reference, which no "
                "single feature's drift shows."
            ),
            **timeseries_options(thresholds="lower|upper"),
        ),
    ]
    return dashboard(
        "tidewatch-feature-drift",
        "Tidewatch · Feature drift",
        "Drift per series and window against the training reference.",
        panels,
        variables(feature=True, score=True),
        annotations(),
    )


def model_quality():
    layout = Layout()
    where = f"{SERIES} AND $__timeFilter(window_start)"
    panels = [
        layout.panel(
            "timeseries",
            "Classification quality",
            [target(
                "SELECT window_start AS time, accuracy, precision, recall, f1, roc_auc FROM window_metrics FINAL "
                f"WHERE {where} AND feature = 'quality' ORDER BY time"
            )],
            **timeseries_options(unit="percentunit"),
        ),
        layout.panel(
            "timeseries",
            "Estimated performance (before labels) against realized",
            [
                target(
                    "SELECT window_start AS time, "
                    + ", ".join(
                        f"estimated_values[indexOf(estimated_names, '{m}')] AS estimated_{m}, "
                        f"nullIf(estimated_lower[indexOf(estimated_names, '{m}')], -1) AS lower_{m}, "
                        f"nullIf(estimated_upper[indexOf(estimated_names, '{m}')], -1) AS upper_{m}"
                        for m in ("accuracy", "roc_auc")
                    )
                    + " FROM window_metrics FINAL "
                    f"WHERE {where} AND feature = 'estimated_quality' AND has(estimated_names, 'accuracy') ORDER BY time"
                ),
                target(
                    "SELECT window_start AS time, accuracy AS realized_accuracy, roc_auc AS realized_roc_auc "
                    f"FROM window_metrics FINAL WHERE {where} AND feature = 'quality' ORDER BY time",
                    ref="B",
                ),
            ],
            description=(
                "Accuracy and ROC AUC estimated from the scores alone (CBPE), with the band they are flagged "
                "outside (the metric realized on the reference ± 3 sampling errors of the window's size), "
                "and the realized values once labels arrive. Valid under covariate shift, not concept shift."
            ),
            **timeseries_options(unit="percentunit"),
        ),
        layout.panel(
            "timeseries",
            "Estimated MAE and RMSE (regression, before targets) against realized",
            [
                target(
                    "SELECT window_start AS time, "
                    + ", ".join(
                        f"estimated_values[indexOf(estimated_names, '{m}')] AS estimated_{m}, "
                        f"nullIf(estimated_lower[indexOf(estimated_names, '{m}')], -1) AS lower_{m}, "
                        f"nullIf(estimated_upper[indexOf(estimated_names, '{m}')], -1) AS upper_{m}"
                        for m in ("mae", "rmse")
                    )
                    + " FROM window_metrics FINAL "
                    f"WHERE {where} AND feature = 'estimated_quality' AND has(estimated_names, 'mae') ORDER BY time"
                ),
                target(
                    "SELECT window_start AS time, mae AS realized_mae, rmse AS realized_rmse "
                    f"FROM window_metrics FINAL WHERE {where} AND feature = 'quality' AND mae IS NOT NULL "
                    "ORDER BY time",
                    ref="B",
                ),
            ],
            description=(
                "Regression models with loss_estimation: MAE and RMSE estimated from the inputs and the "
                "prediction (direct loss estimation), with the band they are flagged outside (the value "
                "realized on the reference ± 3 sampling errors of the window's size), and the realized "
                "values once targets arrive. Valid under covariate shift, not concept shift."
            ),
            **timeseries_options(),
        ),
        layout.panel(
            "timeseries",
            "Regression quality",
            [target(
                "SELECT window_start AS time, mae, rmse, mape, r2 FROM window_metrics FINAL "
                f"WHERE {where} AND feature = 'quality' ORDER BY time"
            )],
            **timeseries_options(),
        ),
        layout.panel(
            "timeseries",
            "Label coverage (share of predictions with their actual)",
            [target(
                "SELECT window_start AS time, sumIf(count, feature = 'quality') / "
                "nullIf(sumIf(count, feature = 'operations'), 0) AS label_coverage FROM window_metrics FINAL "
                f"WHERE {where} AND feature IN ('quality', 'operations') GROUP BY window_start ORDER BY time"
            )],
            **timeseries_options(unit="percentunit"),
        ),
        layout.panel(
            "timeseries",
            "Probabilistic quality: log loss, Brier, calibration error",
            [target(
                "SELECT window_start AS time, log_loss, brier, calibration_error FROM window_metrics FINAL "
                f"WHERE {where} AND feature = 'quality' ORDER BY time"
            )],
            **timeseries_options(),
        ),
        layout.panel(
            "timeseries",
            "Prediction drift: PSI of scores and classes",
            [
                target(
                    "SELECT window_start AS time, feature, psi FROM window_metrics FINAL "
                    f"WHERE {where} AND feature IN ('prediction.score', 'prediction.class') ORDER BY time, feature"
                ),
                target(
                    "SELECT window_start AS time, max(psi_threshold) AS threshold FROM window_metrics FINAL "
                    f"WHERE {where} AND feature IN ('prediction.score', 'prediction.class') "
                    "GROUP BY window_start ORDER BY time",
                    ref="B",
                ),
            ],
            **timeseries_options(thresholds="threshold"),
        ),
        layout.panel(
            "timeseries",
            "Prediction score quantiles",
            [target(
                "SELECT window_start AS time, p05, p25, p50, p75, p95 FROM window_metrics FINAL "
                f"WHERE {where} AND feature = 'prediction.score' ORDER BY time"
            )],
            **timeseries_options(),
        ),
    ]
    return dashboard(
        "tidewatch-model-quality",
        "Tidewatch · Model quality",
        "Quality from predictions joined with their delayed actuals, label coverage, prediction drift.",
        panels,
        variables(),
        annotations(),
    )


def operations():
    layout = Layout()
    bucket = "toDateTime(intDiv(toUInt32(at), $__interval_s) * $__interval_s)"
    where = f"{SERIES} AND $__timeFilter(window_start) AND feature = 'operations'"
    panels = [
        layout.panel(
            "timeseries",
            "Events consumed per second",
            [target(
                f"SELECT {bucket} AS time, topic, sum(consumed) / $__interval_s AS events_per_second "
                "FROM pipeline_stats WHERE $__timeFilter(at) GROUP BY time, topic ORDER BY time"
            )],
            **timeseries_options(unit="ops"),
        ),
        layout.panel(
            "timeseries",
            "Consumer lag (messages)",
            [target(
                "SELECT time, topic, sum(last_lag) AS lag FROM ("
                f"SELECT {bucket} AS time, topic, instance, argMax(lag, at) AS last_lag FROM pipeline_stats "
                "WHERE $__timeFilter(at) GROUP BY time, topic, instance) GROUP BY time, topic ORDER BY time"
            )],
            **timeseries_options(),
        ),
        layout.panel(
            "timeseries",
            "Late and dead-lettered events",
            [target(
                f"SELECT {bucket} AS time, sum(late) AS late_events, sum(dead_lettered) AS dead_lettered_events "
                "FROM pipeline_stats WHERE $__timeFilter(at) GROUP BY time ORDER BY time"
            )],
            **timeseries_options(),
        ),
        layout.panel(
            "timeseries",
            "Predictions per second (event time, per window)",
            [target(
                "SELECT window_start AS time, count / (toUInt32(window_end) - toUInt32(window_start)) "
                f"AS predictions_per_second FROM window_metrics FINAL WHERE {where} ORDER BY time"
            )],
            **timeseries_options(unit="ops"),
        ),
        layout.panel(
            "timeseries",
            "Serving latency",
            [target(
                "SELECT window_start AS time, latency_p50, latency_p95, latency_p99, latency_max "
                f"FROM window_metrics FINAL WHERE {where} ORDER BY time"
            )],
            **timeseries_options(unit="ms"),
        ),
        layout.panel(
            "timeseries",
            "Serving errors and null predictions",
            [target(
                "SELECT window_start AS time, error_rate, null_prediction_rate "
                f"FROM window_metrics FINAL WHERE {where} ORDER BY time"
            )],
            **timeseries_options(unit="percentunit"),
        ),
    ]
    return dashboard(
        "tidewatch-operations",
        "Tidewatch · Operations",
        "Throughput, consumer lag, late and dead-lettered events (pipeline_stats, every 10 s per instance) and serving latency (per window).",
        panels,
        variables(),
        annotations(),
    )


def main():
    for name, build in [
        ("tidewatch-overview", overview),
        ("tidewatch-feature-drift", feature_drift),
        ("tidewatch-model-quality", model_quality),
        ("tidewatch-operations", operations),
    ]:
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
