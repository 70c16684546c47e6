"""Tests that kill the mutants mutmut found alive in the Perplexity service's modules (issue 19).

Each test says what a user or the peer would see go wrong; benchmarks/mutation-perplexity.md lists
the mutants and why the ones still alive are equivalent.
"""

from __future__ import annotations
