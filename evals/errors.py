class EvalError(ValueError):
    """A refused eval or run: `param` names the part of the request (as the API's error does)
    and the message says what to change."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
