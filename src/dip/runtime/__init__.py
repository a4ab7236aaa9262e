"""The torch.distributed runtime: built-in models and the bring-your-own API, the step runner and
executor, the (dp, pp, tp) device mesh with tensor, sequence and sharded data parallelism, the
trainer (data order, plans made ahead by the planner service and delivered through a c10d store,
data loading, tied gradients, gradient synchronisation, ZeRO-1 / FSDP2, AdamW with its LR schedule and
clipping, DCP checkpoints and resumption, faults and stop requests, reference check, checkpoint
write-back) and its launcher.

Imports ``dip.planner`` and the layers below; never ``dip.integrations`` (checkpoint and dataset
loaders reach the trainer as arguments: ``train(cfg, load=..., open_data=...)``).
"""
