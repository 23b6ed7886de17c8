"""EvalRun workload: retrieval metrics of VectorIndexes and LLM-judged answers of a ServingEndpoint."""
