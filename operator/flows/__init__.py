"""Domain logic of each kind as plain functions of a FlowContext (no kopf)."""
