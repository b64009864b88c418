"""The Pie engine: paged KV cache with a CPU pool and layer-wise prefetch."""
