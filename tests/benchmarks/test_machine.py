"""The machine record every benchmark writes (benchmarks/machine.py)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.machine import CPU_FLAGS_OF_INTEREST, machine_record, streaming_read_bandwidth


def test_the_record_names_the_cpu_threads_and_thread_policies(monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    record = machine_record(2, read_bandwidth_gb_s=12.5)
    assert record["threads"] == 2
    assert record["torch"] == torch.__version__
    assert record["omp_wait_policy"] == "PASSIVE"
    assert record["openblas_thread_timeout"] == "unset"
    assert record["read_bandwidth_gb_s"] == 12.5
    assert set(record["cpu"]["flags"]) == set(CPU_FLAGS_OF_INTEREST)
    assert all(isinstance(has, bool) for has in record["cpu"]["flags"].values())
    assert record["cpu"]["model"]
    assert len(record["load_average_end"]) == 3
    assert machine_record((2, 1))["threads"] == [2, 1]


def test_a_measurement_may_not_replace_what_the_record_sets() -> None:
    with pytest.raises(ValueError, match="sets omp_wait_policy, torch itself"):
        machine_record(2, torch="2.0", omp_wait_policy="ACTIVE")


def test_streaming_read_bandwidth_reports_what_it_read() -> None:
    threads = torch.get_num_threads()
    try:
        result = streaming_read_bandwidth(1, gib=1 / 256, reads=2)
    finally:
        torch.set_num_threads(threads)
    assert result["bytes"] == 2**30 // 256
    assert result["threads"] == 1
    # Any machine this runs on reads 4 MiB at more than 100 MB/s and less than 10 TB/s.
    assert 1e8 < result["bytes_per_second"] < 1e13
