"""The torch.distributed runtime: built-in models and the bring-your-own API, the step runner and
executor, the trainer (data loading, tied gradients, data-parallel all-reduce, AdamW, reference check,
checkpoint write-back) and its launcher.

Imports ``dip.planner`` and the layers below; never ``dip.integrations`` (checkpoint and dataset
loaders reach the trainer as arguments: ``train(cfg, load=..., open_data=...)``).
"""
