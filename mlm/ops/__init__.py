"""How the model's ops are computed: one module per op family, and the selector between them.

* `mlm.ops.attention`: SDPA, matmul attention for short CPU sequences, and the fused-QKV
  `MatmulSelfAttention` Function for packed CPU batches.
* `mlm.ops.linear`: `OneDNNLinear`, fp32 linear layers on oneDNN's GEMM (AVX-512 CPUs).
* `mlm.ops.loss`: `SummedCrossEntropy` (fp32, chunked on CPU) and the CPU row buckets.
* `mlm.ops.select`: `Kernels`, the choice of implementation ("auto", or forced, or `PLAIN`),
  and the entries the model calls (`linear`, `attention`, `self_attention`, ...).

Each family's docstring has its measured gain. The model (`mlm.model`) imports these, never
the reverse.
"""
from mlm.ops.select import PLAIN, Kernels

__all__ = ["Kernels", "PLAIN"]
