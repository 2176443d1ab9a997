"""lensblur benchmarks: ``python -m benchmarks`` or ``pytest benchmarks/ --benchmark-only``."""
