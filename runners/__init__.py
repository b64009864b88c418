"""Runner protocol and registry, workloads and arrivals, and the runners themselves."""
