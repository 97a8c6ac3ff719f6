#!/usr/bin/env python3
"""Evolve's model registry beside an MLflow tracking server, same data, same machine, same run.

Both servers run on loopback with a SQLite store; both are driven from this one Python process
(Evolve through its HTTP API with urllib, MLflow through `MlflowClient`), single-threaded, so
the comparison is server against server. Results go to stdout as JSON; BENCHMARKS.md records
them.

Data (the shape of host/benches/registry.rs): MODELS models x VERSIONS versions over 5 task
types, POINTS points per version (sharpe_ratio / max_drawdown / win_rate) over 90 days.
MLflow: an experiment per task type, a run per version (tags model, version) with its points
via log_batch, a registered model per model and a model version per run.

Measured:
- load: the whole data set into each (Evolve: one POST /v1/registry/import; MLflow: its client's
  calls, which is how MLflow ingests);
- tracking: BATCHES batches of 1000 points into one version (Evolve: POST
  /v1/models/{name}/performance; MLflow: log_batch, its maximum of 1000 metrics per call),
  points per second;
- best: the best forecasting version, QUERIES times, median (Evolve: GET
  /v1/models/best?task=forecasting, 3 metrics, 30-day window, recency weights; MLflow:
  search_runs ordered by metrics.sharpe_ratio DESC, max_results=1, MLflow's best-by-metric).

Usage: bench/mlflow_compare.py --evolve target/release/evolve [--models 1000]
"""

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone

TASKS = ["forecasting", "classification", "regression", "anomaly_detection", "portfolio_optimisation"]
METRICS = ["sharpe_ratio", "max_drawdown", "win_rate"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} never answered")


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=600) as r:
        return json.loads(r.read() or b"null")


def dataset(models, versions, points, now):
    rng = random.Random(42)
    span = timedelta(days=90)
    out = []
    for m in range(models):
        created = now - timedelta(days=120)
        model = {
            "name": f"model-{m:04d}", "task_type": TASKS[m % len(TASKS)], "description": "",
            "model_class": "bench", "artifact_uri": None, "sha256": None, "tags": [],
            "dependencies": [], "parameters": {}, "created_at": iso(created), "created_by": None,
            "versions": [], "aliases": [], "alias_history": [], "metrics": [],
        }
        for v in range(1, versions + 1):
            model["versions"].append({
                "version": v, "status": "registered", "description": "",
                "artifact_uri": f"s3://models/m{m}/v{v}", "sha256": None, "parameters": {},
                "metadata": {}, "created_at": iso(created + timedelta(hours=v)), "created_by": None,
            })
            skill = rng.random()
            for i in range(points):
                metric = METRICS[i % 3]
                value = {
                    "sharpe_ratio": 0.5 + 2.0 * skill + 0.3 * rng.random(),
                    "max_drawdown": 0.3 - 0.2 * skill + 0.05 * rng.random(),
                    "win_rate": 0.45 + 0.15 * skill + 0.02 * rng.random(),
                }[metric]
                at = now - span * (points - 1 - i) / points
                model["metrics"].append({"version": v, "metric": metric, "value": value, "timestamp": iso(at)})
        out.append(model)
    return out


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def ms(t):
    return int(t.timestamp() * 1000)


def main():
    # MLflow's client prints a line per run to stdout: keep stdout for the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        results = measure()
    print(json.dumps(results, indent=2))


def measure():
    parser = argparse.ArgumentParser()
    parser.add_argument("--evolve", required=True)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()

    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    work = tempfile.mkdtemp(prefix="evolve-mlflow-")
    procs = []
    try:
        evolve_port, mlflow_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            [args.evolve, "serve", "--data-dir", f"{work}/evolve", "--plugins-dir", f"{work}/plugins",
             "--listen", f"127.0.0.1:{evolve_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "EVOLVE_LOG": "warn"}))
        procs.append(subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server",
             "--backend-store-uri", f"sqlite:///{work}/mlflow.db",
             "--default-artifact-root", f"{work}/artifacts",
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        evolve = f"http://127.0.0.1:{evolve_port}"
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        wait_http(f"{evolve}/healthz")
        wait_http(f"{mlflow_url}/health")
        client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)

        now = datetime.now(timezone.utc)
        models = dataset(args.models, args.versions, args.points, now)
        total_points = sum(len(m["metrics"]) for m in models)
        results = {"models": args.models, "versions": args.models * args.versions, "points": total_points}

        started = time.perf_counter()
        http("POST", f"{evolve}/v1/registry/import",
             {"format": "evolve-model-registry", "version": 1, "exported_at": iso(now), "models": models})
        results["evolve_load_s"] = time.perf_counter() - started

        started = time.perf_counter()
        experiments = {t: client.create_experiment(t) for t in TASKS}
        runs = {}
        for model in models:
            client.create_registered_model(model["name"])
            for version in model["versions"]:
                run = client.create_run(experiments[model["task_type"]], tags={
                    "model": model["name"], "version": str(version["version"])})
                run_id = run.info.run_id
                runs[(model["name"], version["version"])] = run_id
                points = [Metric(p["metric"], p["value"], ms(datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00"))), 0)
                          for p in model["metrics"] if p["version"] == version["version"]]
                for i in range(0, len(points), 1000):
                    client.log_batch(run_id, metrics=points[i:i + 1000])
                client.set_terminated(run_id)
                client.create_model_version(model["name"], version["artifact_uri"], run_id=run_id)
        results["mlflow_load_s"] = time.perf_counter() - started

        # Tracking throughput: batches of 1000 points into one version.
        target = models[0]["name"]
        batch_times = {"evolve": [], "mlflow": []}
        for b in range(args.batches):
            at = now - timedelta(seconds=b)
            evolve_points = [{"version": 1, "metric": METRICS[i % 3], "value": i / 1000.0,
                              "timestamp": iso(at - timedelta(milliseconds=i))} for i in range(1000)]
            mlflow_points = [Metric(METRICS[i % 3], i / 1000.0, ms(at) - i, b + 1) for i in range(1000)]
            started = time.perf_counter()
            http("POST", f"{evolve}/v1/models/{target}/performance", {"points": evolve_points})
            batch_times["evolve"].append(time.perf_counter() - started)
            started = time.perf_counter()
            client.log_batch(runs[(target, 1)], metrics=mlflow_points)
            batch_times["mlflow"].append(time.perf_counter() - started)
        for name, times in batch_times.items():
            results[f"{name}_tracking_points_per_s"] = 1000 * len(times) / sum(times)
            results[f"{name}_batch_median_ms"] = statistics.median(times) * 1e3

        # Best forecasting version.
        query_times = {"evolve": [], "mlflow": []}
        for _ in range(args.queries):
            started = time.perf_counter()
            best = http("GET", f"{evolve}/v1/models/best?task=forecasting")
            query_times["evolve"].append(time.perf_counter() - started)
            started = time.perf_counter()
            found = client.search_runs([experiments["forecasting"]], order_by=["metrics.sharpe_ratio DESC"], max_results=1)
            query_times["mlflow"].append(time.perf_counter() - started)
        results["evolve_best"] = f'{best["winner"]["model"]} v{best["winner"]["version"]}'
        results["mlflow_best"] = f'{found[0].data.tags["model"]} v{found[0].data.tags["version"]}'
        for name, times in query_times.items():
            results[f"{name}_best_median_ms"] = statistics.median(times) * 1e3
        results["ratio_best_mlflow_over_evolve"] = results["mlflow_best_median_ms"] / results["evolve_best_median_ms"]
        results["ratio_tracking_evolve_over_mlflow"] = results["evolve_tracking_points_per_s"] / results["mlflow_tracking_points_per_s"]
        results["ratio_load_mlflow_over_evolve"] = results["mlflow_load_s"] / results["evolve_load_s"]
        return results
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM) if proc.args[1] == "server" else proc.terminate()
            except Exception:
                proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
