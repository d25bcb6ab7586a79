"""The benchmarks of propagation, idle cost, start-up and the cluster still run (a few
iterations; the figures mean nothing here), print their table and write their JSON. They are
not tests of speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bench import kit
from tests.agentproc import REPO

pytestmark = pytest.mark.integration

EXPECTED_DATA = {
    "propagation": {"cases", "per_sink_ms"},
    "idle": {"agent", "baseline", "config"},
    "startup": {"cases"},
}


def test_propagation_idle_and_startup_print_figures_and_write_json(tmp_path: Path) -> None:
    out_file = tmp_path / "bench.json"
    out = subprocess.run(
        [sys.executable, "-m", "agent.bench", "--smoke", "--only", "propagation,idle,startup",
         "--json", str(out_file)],
        cwd=REPO, env=kit.child_env(), capture_output=True, text=True, timeout=120)
    # Exit 1 means a goal was missed, which a smoke run's figures may well do; 2+ is a failure.
    assert out.returncode in (0, 1), out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    doc = json.loads(out_file.read_text())
    assert doc["mode"] == "smoke" and {"python", "cpus"} <= doc["machine"].keys()
    results = {r["bench"]: r for r in doc["results"]}
    assert results.keys() == EXPECTED_DATA.keys()
    for name, keys in EXPECTED_DATA.items():
        assert keys <= results[name]["data"].keys(), name
        assert not [r for r in results[name]["rows"] if r["figure"] == "failed"], name
    cases = results["propagation"]["data"]["cases"]
    assert [c["sinks"] for c in cases] == [1, 5]
    for case in cases:
        assert case["agent"]["n"] == case["writes"] and case["agent"]["median_ms"] > 0
        assert case["floor"]["n"] == case["writes"] and case["floor"]["median_ms"] > 0
    agent = results["idle"]["data"]["agent"]
    assert agent["rss_mb"] > 0 and agent["threads"] >= 1
    startup = results["startup"]["data"]["cases"][0]
    assert startup["token"]["median_ms"] > 0 and startup["ratio"] > 0
    # The printed table carries the same figures, one line each.
    for row in (r for res in doc["results"] for r in res["rows"]):
        assert any(row["bench"] in line and row["value"] in line
                   for line in out.stdout.splitlines()), row


def test_cluster_case_prints_figures_and_writes_json(tmp_path: Path) -> None:
    out_file = tmp_path / "bench.json"
    out = subprocess.run(
        [sys.executable, "-m", "agent.bench", "--smoke", "--only", "cluster",
         "--json", str(out_file)],
        cwd=REPO, env=kit.child_env(), capture_output=True, text=True, timeout=90)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    (result,) = json.loads(out_file.read_text())["results"]
    assert result["bench"] == "cluster"
    assert not [r for r in result["rows"] if r["figure"] == "failed"], result["rows"]
    prop, idle = result["data"]["propagation"], result["data"]["idle"]
    assert prop["agent"]["n"] == prop["floor"]["n"] == result["data"]["config"]["publishes"]
    assert prop["agent"]["median_ms"] > 0 and prop["floor"]["median_ms"] > 0
    assert prop["a_to_redis"]["n"] == prop["agent"]["n"] and prop["blob_bytes"] > 0
    assert set(prop["per_machine"]) == {"b", "c"}
    assert idle["member"]["rss_mb"] > 0 and idle["no_cluster"]["rss_mb"] > 0
    assert any(r["goal"] == "p99 <= 1000 ms" for r in result["rows"])
    for row in result["rows"]:
        assert any(row["value"] in line for line in out.stdout.splitlines()), row


def test_percentiles_and_the_table() -> None:
    assert kit.percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert kit.percentile([float(x) for x in range(1, 101)], 99) == 99.0
    s = kit.summary_ms([0.001, 0.002, 0.003])
    assert s == {"n": 3, "median_ms": 2.0, "p99_ms": 3.0, "min_ms": 1.0, "max_ms": 3.0}
    result = kit.Result("b")
    result.row("c", "f", "1.0 ms", "< 2 ms", True)
    result.row("c", "g", "9.0 ms", "< 2 ms", False)
    table = kit.render_table(result.rows).splitlines()
    assert table[0].split() == ["bench", "case", "figure", "value", "goal"]
    assert table[2].endswith("ok") and table[3].endswith("MISSED")
    assert [r.figure for r in result.missed] == ["g"]
