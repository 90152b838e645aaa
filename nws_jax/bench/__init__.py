"""Benchmarks: `python -m nws_jax.bench --suite=zoo|roofline|meta|io|release|all`.

common.py    BenchConfig, the device description and the timing helper every suite uses
zoo.py       vectorised zoo trainer against a per-model loop: model-steps/s, images/s, compile
roofline.py  achieved FLOP/s of the training step against the measured matmul peak; memory
meta.py      meta-classifier slice-reads/s: one property against all in one program
io.py        snapshot saving (and its stall of training) and slice-read throughput
release.py   the release format from disk: slices/s from a warm and a cold page cache, open
             checks per net, memory bounded by the batch under RLIMIT_AS (bounded_read.py:
             the reader process it runs under that limit)
report.py    the stdout table and the JSON lines
"""
