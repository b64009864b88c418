"""RunRecord schema, metrics, results store, comparison and reports."""
