"""`frozen_heap()`: keep Python's cyclic garbage collector off the objects that live for a whole run.

Used by every runner's request loop (`runners/request_loop.drive_engine`) and by `pie serve`'s engine loop.
After start-up a `pie bench` or `pie serve` process tracks ~170,000 container objects (torch, transformers,
the model's modules, the tokenizer), and each full collection walks them all: one took 104 ms in a 96-request
`pie bench` run of OPT-125m (2-core Xeon; gc callbacks counting collections), a stall of every sequence's
next token, and a server meets one every so often for days. `gc.freeze()` moves what is alive at the start
into a permanent generation that collections skip (what vLLM does after its start-up too); objects made
during the run are collected as before. On exit the frozen objects go back to the collector's oldest
generation, so a process that builds several engines (the tests) frees them as before.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    gc.collect()  # start-up's garbage goes now, not into the permanent generation
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
