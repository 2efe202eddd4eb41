"""TrainingRun reconciliation: pure renderers and status logic, and the kopf handlers over them."""
