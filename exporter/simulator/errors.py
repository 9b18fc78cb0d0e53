"""Graph API error bodies as Meta sends them (docs/graph-api.md, section 2)."""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorSpec:
    status: int
    code: int
    subcode: int | None
    type: str
    message: str
    transient: bool = False


ERRORS: dict[str, ErrorSpec] = {
    "token_missing": ErrorSpec(
        400, 104, None, "OAuthException", "An access token is required to request this resource."
    ),
    "token_expired": ErrorSpec(
        400,
        190,
        463,
        "OAuthException",
        "Error validating access token: Session has expired on Sunday, 01-Nov-26.",
    ),
    "token_invalid": ErrorSpec(
        400,
        190,
        467,
        "OAuthException",
        "Error validating access token: The session is invalid because the user logged out.",
    ),
    "token_malformed": ErrorSpec(400, 190, None, "OAuthException", "Malformed access token {token}"),
    "permission": ErrorSpec(
        403, 10, None, "OAuthException", "(#10) Application does not have permission for this action"
    ),
    "permission_200": ErrorSpec(
        403,
        200,
        None,
        "OAuthException",
        "(#200) Requires ads_management or ads_read permission to access this object",
    ),
    "not_found": ErrorSpec(
        400,
        100,
        33,
        "GraphMethodException",
        "Unsupported get request. Object with ID '{object_id}' does not exist, cannot be loaded due to missing "
        "permissions, or does not support this operation.",
    ),
    "throttle_app": ErrorSpec(400, 4, 1504022, "OAuthException", "(#4) Application request limit reached"),
    "throttle_user": ErrorSpec(400, 17, 2446079, "OAuthException", "(#17) User request limit reached"),
    "throttle_613": ErrorSpec(
        400, 613, 1487742, "OAuthException", "(#613) Calls to this api have exceeded the rate limit."
    ),
    "throttle_business": ErrorSpec(
        400,
        80004,
        2446079,
        "OAuthException",
        "(#80004) There have been too many calls to this ad-account. Wait a bit and try again.",
    ),
    "policy_block": ErrorSpec(
        400,
        368,
        1390008,
        "OAuthException",
        "(#368) The action attempted has been deemed abusive or is otherwise disallowed",
    ),
    "transient_1": ErrorSpec(500, 1, None, "OAuthException", "An unknown error occurred", transient=True),
    "transient_2": ErrorSpec(503, 2, None, "OAuthException", "Service temporarily unavailable", transient=True),
    "negative_code": ErrorSpec(400, -2, None, "OAuthException", "Timeout"),  # Meta's own failure, no is_transient
    "version": ErrorSpec(
        400,
        2635,
        None,
        "OAuthException",
        "(#2635) You are calling a deprecated version of the Ads API. Please update to the latest version: {latest}.",
    ),
    "bad_parameter": ErrorSpec(400, 100, None, "OAuthException", "{detail}"),
    "unknown_path": ErrorSpec(400, 2500, None, "OAuthException", "Unknown path components: {detail}"),
    "proof_missing": ErrorSpec(
        400,
        100,
        None,
        "GraphMethodException",
        "API calls from the server require an appsecret_proof argument",
    ),
    "proof_invalid": ErrorSpec(
        400, 100, None, "GraphMethodException", "Invalid appsecret_proof provided in the API argument"
    ),
}


def fbtrace_id(rng: random.Random) -> str:
    return "A" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(22))


def error_body(
    name: str, rng: random.Random, error_data: dict[str, Any] | str | None = None, **fmt: Any
) -> tuple[int, dict[str, Any]]:
    spec = ERRORS[name]
    error: dict[str, Any] = {
        "message": spec.message.format(**fmt) if fmt else spec.message,
        "type": spec.type,
        "code": spec.code,
        "fbtrace_id": fbtrace_id(rng),
    }
    if spec.subcode is not None:
        error["error_subcode"] = spec.subcode
    if spec.transient:
        error["is_transient"] = True
    if error_data is not None:
        error["error_data"] = error_data
    if spec.code == 190:
        error["error_user_title"] = "Session expired" if spec.subcode == 463 else "Invalid session"
        error["error_user_msg"] = "Your session is no longer valid. Please log in again."
    return spec.status, {"error": error}


def raw_fault_reply(name: str) -> tuple[int, str, bytes]:
    """(status, content type, body) for faults whose body is not a Graph JSON object."""
    if name == "http_500":
        return 500, "text/plain", b"Internal Server Error"
    if name == "http_503":
        return 503, "text/html", b"<html><body><h1>503 Service Unavailable</h1></body></html>"
    if name == "http_429":
        return 429, "text/html", b"<html><body><h1>429 Too Many Requests</h1></body></html>"
    if name == "not_json":
        return 200, "application/json; charset=UTF-8", b'{"web": [{"event_name": "Purchase", "event_ma'
    raise ValueError(name)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()
