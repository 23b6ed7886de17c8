"""TrainingJob workload: causal-LM pretraining under Ray Train (DDP/FSDP, scheduled EMA) on the common base."""
