"""Memory arithmetic (model shapes are in pie_core), cost model, LP planner and online hill-climber (torch-free)."""
