"""ModelService: pure renderers of the production objects, pure status, and the reconciler."""
