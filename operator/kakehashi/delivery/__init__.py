"""Getting rendered objects onto the production cluster: directly, or through a pull request."""
