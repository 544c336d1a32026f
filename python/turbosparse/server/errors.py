"""Errors the server answers with, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

from typing import Any, Dict, Optional


class APIError(Exception):
    """An HTTP error answered to the client; the message says what was wrong with the request."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: Optional[str] = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param)
