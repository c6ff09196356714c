"""rnnkit's benchmark suite: ``python -m benchmarks.run`` (see ``benchmarks/run.py``).

* :mod:`benchmarks.timing`: interleaved timing, summary statistics, peak memory of one call.
* :mod:`benchmarks.flops`: FLOP counts of the recurrent layers and this machine's measured GEMM peak.
* :mod:`benchmarks.run`: the command line, the contenders, the targets and the report.
"""
