"""bonsai-mcu: ONNX models to ternary-weight C99 for microcontrollers."""

__version__ = "0.1.0"


class BonsaiError(Exception):
    """An error the user can act on: bad model, bad option, missing tool.

    The command-line interface prints its message on one line and exits
    with a non-zero status, without a traceback.
    """
