"""What the API layer (`kubeforge.cluster`) raises to the reconcile loop, without the loop importing it."""


class Conflict(Exception):
    """The object changed since the pass read it (HTTP 409 on a resourceVersion precondition)."""


class ChildNameTaken(Exception):
    """A child's deterministic name is held by an object this resource does not own."""
