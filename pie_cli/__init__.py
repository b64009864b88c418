"""The `pie` command line: parsing and rendering only; the work lives in the other packages."""
