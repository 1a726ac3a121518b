"""The soak test: its growth measure and verdict on synthetic samples, its CSV, one short run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from deploy.processes import stop_service
from load_tests.soak import (
    MIB,
    default_warmup,
    growth,
    main,
    parse,
    restarted_workers,
    verdict,
    write_csv,
)

SERVED = {"requests": 100, "failures": 0}


def run(seconds: int, model_mib, api_mib: float = 300.0, interval: int = 5) -> list:
    """Synthetic samples every `interval` s: a service worker, another role and the arbiter.

    `model_mib` maps the elapsed seconds to the service worker's MiB.
    """
    samples = []
    for t in range(0, seconds + 1, interval):
        sizes = {"service-10": model_mib(t), "api-11": api_mib, "server-9": 100.0}
        samples.append((float(t), {key: int(mib * MIB) for key, mib in sizes.items()}))
    return samples


def test_flat_memory_has_zero_growth_everywhere():
    figures = growth(run(600, lambda t: 800.0), warmup_s=120, window=5)
    assert set(figures) == {"service", "api", "server", "total"}
    assert all(f["growth_percent"] == 0.0 for f in figures.values())
    assert figures["total"]["end_mib"] == 1200.0


def test_warm_up_climb_is_ignored():
    figures = growth(run(600, lambda t: 400.0 + 4 * min(t, 100)), warmup_s=120, window=5)
    assert figures["service"]["after_warmup_mib"] == 800.0
    assert figures["service"]["growth_percent"] == 0.0


def test_growth_compares_median_of_first_and_last_windows_after_warm_up():
    # After warm-up (t >= 100) the model grows linearly from 1000 MiB by 1 MiB/s:
    # the first window is t = 100..120 (median t = 110), the last 480..500 (median 490).
    figures = growth(run(500, lambda t: 900.0 + t), warmup_s=100, window=5)
    assert figures["service"]["after_warmup_mib"] == 1010.0
    assert figures["service"]["end_mib"] == 1390.0
    assert figures["service"]["growth_percent"] == pytest.approx(100 * 380 / 1010, abs=1e-3)
    assert figures["api"]["growth_percent"] == 0.0
    assert figures["total"]["growth_percent"] == pytest.approx(100 * 380 / 1410, abs=1e-3)


def test_one_outlier_in_a_window_does_not_move_the_median():
    samples = run(600, lambda t: 800.0)
    samples[-1][1]["service-10"] = 5000 * MIB
    assert growth(samples, warmup_s=120, window=5)["service"]["growth_percent"] == 0.0


def test_processes_of_a_role_are_summed():
    samples = [(float(t), {"api-1": 100 * MIB, "api-2": 50 * MIB}) for t in range(20)]
    assert growth(samples, warmup_s=0, window=3)["api"]["end_mib"] == 150.0


def test_too_few_samples_after_warm_up_gives_no_figures_and_fails():
    samples = run(60, lambda t: 800.0)  # 13 samples, 3 after t = 50
    assert growth(samples, warmup_s=50, window=2) == {}
    assert any("too few" in r for r in verdict(SERVED, 0, {}, 5.0, []))


def figures_with(model_growth: float) -> dict:
    flat = {"after_warmup_mib": 100.0, "end_mib": 100.0, "growth_percent": 0.0}
    model = {"after_warmup_mib": 100.0, "end_mib": 100.0 + model_growth,
             "growth_percent": model_growth}  # fmt: skip
    return {"service": model, "api": flat, "total": flat}


def test_growth_at_the_limit_passes_and_above_it_fails_naming_the_role():
    assert verdict(SERVED, 0, figures_with(5.0), 5.0, []) == []
    assert verdict(SERVED, 0, figures_with(-3.0), 5.0, []) == []
    [reason] = verdict(SERVED, 0, figures_with(5.01), 5.0, [])
    assert reason.startswith("service memory grew 5.01 %")
    assert verdict(SERVED, 0, figures_with(7.0), 10.0, []) == []


def test_any_failed_request_fails():
    [reason] = verdict({"requests": 100, "failures": 1}, 1, figures_with(0.0), 5.0, [])
    assert "1 of 100 requests failed" in reason
    assert verdict(SERVED, 1, figures_with(0.0), 5.0, []) != []
    assert verdict({"requests": 0, "failures": 0}, 0, figures_with(0.0), 5.0, []) != []


def test_a_restarted_worker_is_reported_and_fails():
    samples = run(100, lambda t: 800.0)
    for _, sizes in samples[10:]:
        sizes["service-12"] = sizes.pop("service-10")
    assert restarted_workers(samples) == ["service-10", "service-12"]
    assert restarted_workers(run(100, lambda t: 800.0)) == []
    assert verdict(SERVED, 0, figures_with(0.0), 5.0, ["service-12"]) != []


def test_a_helper_process_coming_and_going_is_not_a_restart():
    samples = run(100, lambda t: 800.0)
    samples[3][1]["server-99"] = MIB
    assert restarted_workers(samples) == []


def test_csv_has_a_column_per_process_and_the_total(tmp_path):
    samples = run(20, lambda t: 800.0 + t)
    del samples[1][1]["api-11"]
    path = tmp_path / "memory.csv"
    write_csv(samples, path)
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    header = ["elapsed_s", "service-10_mib", "api-11_mib", "server-9_mib", "total_mib"]
    assert list(rows[0]) == header
    assert [float(r["elapsed_s"]) for r in rows] == [0, 5, 10, 15, 20]
    assert rows[1]["api-11_mib"] == ""
    for row, (_, sizes) in zip(rows, samples, strict=True):
        cells = [float(v) for k, v in row.items() if k not in ("elapsed_s", "total_mib") and v]
        assert float(row["total_mib"]) == pytest.approx(sum(cells), abs=0.02)
        assert float(row["total_mib"]) == pytest.approx(sum(sizes.values()) / MIB, abs=0.01)


def test_default_warm_up_is_two_minutes_or_a_fifth_whichever_is_shorter():
    assert default_warmup(600) == 120
    assert default_warmup(3600) == 120
    assert default_warmup(300) == 60
    assert parse(["--duration", "3m"]).warmup_s == 36
    assert parse(["--duration", "3m", "--warmup", "60s"]).warmup_s == 60


def test_bad_options_are_refused():
    for argv in (["--duration", "ten"], ["--duration", "60s", "--warmup", "2m"],
                 ["--interval", "0"]):  # fmt: skip
        with pytest.raises(SystemExit):
            parse(argv)


def sleeper(ignore_sigterm: bool) -> subprocess.Popen:
    """A process in its own session that sleeps, ignoring SIGTERM or not."""
    code = "import signal, time\n"
    if ignore_sigterm:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print(flush=True)\ntime.sleep(60)\n"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               start_new_session=True)  # fmt: skip
    process.stdout.readline()  # the handler is in place
    return process


def test_stop_kills_what_ignores_sigterm_and_names_it():
    process = sleeper(ignore_sigterm=True)
    assert stop_service(process, grace=0.5) == [f"server-{process.pid}"]
    assert process.returncode is not None


def test_stop_kills_nothing_that_exits_on_sigterm():
    process = sleeper(ignore_sigterm=False)
    assert stop_service(process, grace=30) == []
    assert process.returncode is not None


@pytest.mark.e2e
def test_forty_second_soak_serves_every_request_and_writes_its_reports(tag, bento, tmp_path):
    output = tmp_path / "soak"
    main([
        "--model", tag, "--bento", bento, "--users", "4", "--duration", "40s", "--warmup", "15s",
        "--interval", "1", "--window", "3", "--output", str(output),
    ])  # fmt: skip
    summary = json.loads((output / "summary.json").read_text())
    assert summary["served"]["failures"] == 0, summary
    assert summary["served"]["requests"] > 0
    assert {"service", "total"} <= set(summary["growth"])
    assert summary["growth"]["service"]["after_warmup_mib"] > 0
    for name in ("memory.csv", "memory.png", "locust_stats.csv", "report.html"):
        assert (output / name).stat().st_size > 0, name
    with open(output / "memory.csv") as handle:
        header = next(csv.reader(handle))
    assert any(h.startswith("service-") for h in header)
