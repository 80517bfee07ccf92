"""Training: the train state and the data-parallel step (`state`), the run context that holds
the lease, preemption and restore (`run`), and the loop behind `experiments.train` (`loop`).

docs/training.md; what a killed run guarantees: docs/fault_tolerance.md.
"""
