"""Small seeded experiments that reproduce the seeds' claims about recurrent networks, one module per claim.

* :mod:`~rnnkit.training.experiments.future_context`: a tag that depends on a
  later token needs a bidirectional RNN;
* :mod:`~rnnkit.training.experiments.long_range`: memory over a long gap needs
  gates, and accuracy falls where the gradient vanishes;
* :mod:`~rnnkit.training.experiments.order`: a label that depends on order only
  defeats the bag-of-words MLP and not an RNN.

Each module has a typed config (with a ``QUICK`` variant for tests), a
``run(config, out)`` that trains, writes a CSV and a PNG into ``out`` and
returns its result, and ``report(result)``: the Markdown section of
``REPORT.md``. ``rnnkit diagnose <experiment>`` drives them; see
docs/diagnostics.md.
"""
