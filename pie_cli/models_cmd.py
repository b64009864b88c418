"""`pie models`: list the built-in registry of model shapes with their memory figures."""
from __future__ import annotations

from pie_cli.options import DtypeOpt, JsonOpt
from pie_cli.output import Output
from pie_core.dtypes import canonical_dtype
from pie_core.shapes import REGISTRY
from pie_core.sizes import GIB, KIB


def models(dtype: DtypeOpt = "float16", json_out: JsonOpt = False) -> None:
    """List known model shapes: parameters, weight bytes and KV bytes per token.

    Example: pie models --dtype bfloat16
    """
    dtype = canonical_dtype(dtype)
    out = Output(json_out)
    rows = [{"name": s.name, "family": s.family, "params_b": s.num_params() / 1e9,
             "weights_gib": s.weight_bytes(dtype) / GIB, "kv_kib_per_token": s.kv_bytes_per_token(dtype) / KIB,
             "layers": s.num_layers, "hidden": s.hidden_size, "kv_heads": s.num_kv_heads}
            for s in REGISTRY.values()]
    if json_out:
        out.json({"dtype": dtype, "models": rows})
        return
    out.table(f"Known models ({dtype})", ["model", "family", "params (B)", "weights (GiB)", "KV/token (KiB)", "layers", "hidden", "kv heads"],
              [list(r.values()) for r in rows])
