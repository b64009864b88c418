"""The ground layer: what every other package stands on, importing nothing else of the project.

Errors and the exit-code contract (`errors`), byte sizes and their parsing (`sizes`), atomic JSON
files and JSON cleaning (`json_files`), number formatting for tables (`formatting`), model shapes
(`shapes`), dtype names (`dtypes`), the device capability record and the dtype/kernel choices that
follow from it (`capability`, torch-free), and probing this machine (`device_probe`, `fingerprint`:
the two modules here that import torch, inside their functions). The layers above run one way:
pie_core <- runners.engine <- profiler / planner / results <- runners <- pie_cli (contracts in
pyproject.toml, checked by tests/test_layers.py).
"""
