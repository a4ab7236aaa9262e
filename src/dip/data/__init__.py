"""Sample metadata and data: micro-batch metadata, workload generators from published dataset
statistics, packing, manifests, real dataset formats and their metadata pass, and the shapes of the
tensors that cross chunk boundaries (``dip.data.tensors``).

Owns what a batch holds. Imports ``dip.spec``, ``dip.io`` and ``dip.errors`` only; no torch."""
