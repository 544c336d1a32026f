"""The one error type of the training tools: a message for the user, no traceback."""


class TrainError(Exception):
    pass
