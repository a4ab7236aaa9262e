"""The torch.distributed runtime: built-in models and the bring-your-own API, the step runner and
executor, the (dp, pp, tp) device mesh with tensor, sequence and sharded data parallelism, the
trainer (data loading, tied gradients, gradient synchronisation, ZeRO-1 / FSDP2, AdamW, reference
check, checkpoint write-back) and its launcher.

Imports ``dip.planner`` and the layers below; never ``dip.integrations`` (checkpoint and dataset
loaders reach the trainer as arguments: ``train(cfg, load=..., open_data=...)``).
"""
