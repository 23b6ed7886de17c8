"""FineTune workload: LoRA / QLoRA / full fine-tuning under Ray Train with transformers Trainer + peft."""
