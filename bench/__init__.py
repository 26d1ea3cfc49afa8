"""The overlay benchmark suite: ``python bench/run.py [--quick] [--json FILE]``.

Not part of the CI test suite; see ``docs/benchmarks.md`` for the method and the results.
"""
