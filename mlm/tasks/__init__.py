"""Downstream tasks: labelled-data reading, encoding, heads, metrics, task types and the linear probe.

Shared by `mlm.finetune` (and its benchmark), `mlm.probe`, `mlm.hf` and `mlm.scoring`; a new task
type is a reader, a head, its metrics and a `Task` class in `kinds` here — the fine-tuning run
itself does not change.
"""
