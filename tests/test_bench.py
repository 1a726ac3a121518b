"""`load_tests/bench.py` runs end to end on a tiny input and reports every row it promises."""

from __future__ import annotations

import json

from load_tests import bench


def test_bench_reports_each_dtype_batch_and_t(tmp_path):
    output = tmp_path / "bench.json"
    argv = ["--size", "32", "--samples", "2", "3", "--batches", "1", "2", "--repeats", "1",
            "--naive-passes", "1", "--base-dtypes", "float32", "bfloat16",
            "--base-weights", "none", "--output", str(output)]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(output.read_text())
    keys = {(r["base_dtype"], r["batch"], r["samples"]) for r in result["rows"]}
    assert keys == {(d, b, t) for d in ("float32", "bfloat16") for b in (1, 2) for t in (2, 3)}
    for row in result["rows"]:
        assert row["mc_images_per_s"] > 0 and row["naive_over_mc"] > 0
    deviation = result["max_abs_diff_vs_first_dtype"]
    assert deviation["float32"] == 0.0
    assert 0.0 < deviation["bfloat16"] < 0.05
