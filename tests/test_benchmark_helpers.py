"""The benchmark scripts' shared helpers that their tables depend on."""

import platform

from benchmarks.common import cpu_model


def test_cpu_model_reads_the_model_name_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n"
                       "flags\t\t: fpu avx512f\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n")
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Gold 6338"


def test_cpu_model_falls_back_to_platform_without_cpuinfo(tmp_path):
    expected = platform.processor() or platform.machine()
    assert cpu_model(tmp_path / "missing") == expected
    (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # no model name line (some ARM kernels)
    assert cpu_model(tmp_path / "arm") == expected
