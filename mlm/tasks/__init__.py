"""Downstream tasks: labelled-data reading, encoding, heads, metrics and the linear probe.

Shared by `mlm.finetune`, `mlm.probe` and `mlm.evaluate`; a new task type is a reader, a head and
its metrics here, and a branch in fine-tuning.
"""
