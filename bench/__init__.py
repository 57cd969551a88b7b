"""Benchmarks of tap-emulator, measured side by side (issue 6).

Every figure is a ratio against a baseline measured in the same run, interleaved (A B A B ...), with
medians over several rounds, because the machines the project runs on are shared and noisy. The load
generators encode their frames by hand on raw sockets and run in this process while every server runs
in a subprocess of its own, so a generator never competes with the server it measures for one
interpreter; each generator reports its own CPU share so a saturated generator is visible.

``python -m bench`` (or ``make bench``) runs everything and writes ``bench/results.json``;
``python -m bench --quick`` runs each benchmark for about a second (the smoke test uses it).
"""
