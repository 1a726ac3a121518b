"""The 15-second load test: the built bento under Locust, every answer checked."""

from __future__ import annotations

import json

import pytest

from load_tests.run_loadtest import main

pytestmark = pytest.mark.e2e


def test_fifteen_second_load_test_has_no_failed_request(tag, bento, tmp_path):
    output = tmp_path / "loadtest"
    code = main([
        "--model", tag, "--bento", bento, "--users", "4", "--spawn-rate", "4", "--duration", "15s",
        "--inprocess-seconds", "3", "--output", str(output),
    ])  # fmt: skip
    summary = json.loads((output / "summary.json").read_text())
    assert code == 0, summary
    assert summary["served"]["failures"] == 0
    assert summary["served"]["requests"] > 0
    assert summary["adaptive_batches"]["images"] > 0
    assert summary["weights"]["unchanged"] is True  # BN statistics included, bit for bit
    assert summary["weights"]["sha256_before"] == summary["weights"]["sha256_after"]
    assert summary["inprocess_images_per_s"] > 0
    assert summary["cpu_cores"]["model"] > 0 and summary["cpu_cores"]["api"] > 0
    assert 0 < summary["inprocess_cpu_cores"] <= summary["cpu_cores"]["machine"] + 0.5
    assert (output / "locust_stats.csv").is_file() and (output / "report.html").is_file()
