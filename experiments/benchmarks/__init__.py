"""The benchmarks behind BENCHMARKS.md, one module per thing measured.

- ``step_cost``: one training step of RBD, FPD and SGD on the paper's models.
- ``generators``: the direction generators alone, and fused with c = Phi g, u = Phi^T c.
- ``structured``: structured bases' rows, and the Walsh-Hadamard transform.
- ``end_to_end``: the trainer's step and evaluation against the bare ones.
- ``common``: what they share (the machine, timing, peak memory, table cells).
- ``child_process``: runs a function in a fresh Python process and returns its JSON.

The command lines are ``experiments/benchmark.py`` and ``experiments/workers_benchmark.py``.
"""
