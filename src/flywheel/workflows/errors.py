"""What a workflow step raises when it cannot do its job."""


class StepError(RuntimeError):
    """A pipeline step cannot do its job; the message says why and what to do."""


class DataGateError(StepError):
    """The dataset failed validation: the pipeline stops before training."""
