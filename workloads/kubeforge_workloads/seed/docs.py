"""Kubeforge's own documentation, the corpus for the tokenizer, the instruction data and RAG examples."""

DOCS = {
    "overview.md": """Kubeforge is a Kubernetes operator for the whole generative AI lifecycle.
Users apply five custom resources: TrainingJob, FineTune, VectorIndex, ServingEndpoint and EvalRun.
A kopf operator turns each resource into Ray workloads on GPUs through KubeRay RayJob and RayService objects.
It watches them, detects failures and resumes from the last checkpoint with no human.""",
    "resilience.md": """Workloads rewrite progress.json every few seconds with the step, the loss and the throughput.
An attempt has failed when its RayJob reports FAILED, when its pods were OOMKilled or evicted, or when the
heartbeat is older than the hang timeout. Every failure gets a reason: Infrastructure, OutOfMemory, Hang,
NodeCheckFailed, UserError or Unknown. User errors fail fast; the rest retry with exponential backoff up to
maxRestarts. A checkpoint counts only after its manifest is written last.""",
    "finetune.md": """A FineTune fine-tunes a causal language model with LoRA, QLoRA or a full fine-tune.
LoRA with rank eight on all linear layers worked best in the OpenLLaMA guide. QLoRA loads the base model in
four bits and needs a GPU. The adapter is registered in the MLflow model registry and can be merged into the
base model for serving.""",
    "serving.md": """A ServingEndpoint serves a base model with LoRA adapters behind an OpenAI compatible API.
It can retrieve context from a VectorIndex before generating an answer. It scales with Ray Serve.""",
    "evaluation.md": """An EvalRun scores an endpoint: retrieval precision, recall and nDCG at k, and an LLM judge
grading correctness, comprehensiveness and readability on a zero to three scale. A gate passes or fails the run.""",
}

FACTS = [
    ("What is Kubeforge?", "Kubeforge is a Kubernetes operator for the whole generative AI lifecycle."),
    ("Which resources does Kubeforge add?",
     "TrainingJob, FineTune, VectorIndex, ServingEndpoint and EvalRun."),
    ("What does Kubeforge do?", "It turns each resource into Ray workloads on GPUs and resumes them after failures."),
    ("How does Kubeforge run workloads?", "Through KubeRay RayJob and RayService objects."),
    ("What is the short name of FineTune?", "The short name of FineTune is ft."),
    ("What is the short name of TrainingJob?", "The short name of TrainingJob is tj."),
    ("What is the short name of VectorIndex?", "The short name of VectorIndex is vi."),
    ("What is the short name of ServingEndpoint?", "The short name of ServingEndpoint is se."),
    ("What is the short name of EvalRun?", "The short name of EvalRun is er."),
    ("How often is progress written?", "Workloads rewrite progress.json every few seconds."),
    ("When does a checkpoint count?", "A checkpoint counts only after its manifest is written last."),
    ("What happens to user errors?", "User errors fail fast without a retry."),
    ("What happens to infrastructure failures?", "They retry with exponential backoff up to maxRestarts."),
    ("How is a hang detected?", "The heartbeat is older than the hang timeout."),
    ("Which failure reasons exist?",
     "Infrastructure, OutOfMemory, Hang, NodeCheckFailed, UserError and Unknown."),
    ("What does LoRA train?", "LoRA trains small rank decomposition matrices on the linear layers."),
    ("Which LoRA rank worked best?", "Rank eight on all linear layers worked best."),
    ("What does QLoRA need?", "QLoRA loads the base model in four bits and needs a GPU."),
    ("Where is the adapter registered?", "The adapter is registered in the MLflow model registry."),
    ("What does a ServingEndpoint offer?", "An OpenAI compatible API for a model with LoRA adapters."),
    ("What does an EvalRun measure?", "Retrieval precision, recall and nDCG at k, and an LLM judge score."),
    ("What scale does the judge use?", "The judge grades on a zero to three scale."),
    ("What does a gate do?", "A gate passes or fails the evaluation run."),
]

PHRASINGS = ["{q}", "Question: {q}", "Please answer: {q}", "{q} Answer briefly.", "Tell me: {q}",
             "In Kubeforge, {ql}", "I would like to know: {q}", "Explain shortly. {q}", "Quick one: {q}",
             "About the operator: {q}"]
