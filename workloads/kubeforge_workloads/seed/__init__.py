"""Seed data for the sandbox: a tiny Llama built from a config, a tokenizer trained in-process, datasets."""
