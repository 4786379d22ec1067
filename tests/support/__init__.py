"""Shared test rigs for tether's integration tests: real peers, real faults, bounded waits.

See ``tests/support/README.md`` for how to use them. Every process a rig starts is stopped by its
PID in teardown, and every wait takes a timeout.
"""
