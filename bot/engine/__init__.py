"""The engine: the planner, the pipeline, the job runner and recovery, and the rollback service."""
