"""tether's benchmarks: never unit tests; run by hand or by ``tether bench``.

Every scenario runs servers and clients in separate processes (``sys.executable``
running :mod:`benchmarks.peers`), on loopback or inside a network namespace the
scenario creates, and bounds every loop by count and time. See
``docs/benchmarks.md`` for the method and recorded results.
"""
