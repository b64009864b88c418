"""Model shapes, memory arithmetic, cost model, LP planner and online hill-climber (torch-free)."""
