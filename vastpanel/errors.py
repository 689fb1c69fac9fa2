"""The errors of vast.ai calls and of domain actions; each message is safe to show."""

from __future__ import annotations

from enum import StrEnum


class VastErrorKind(StrEnum):
    """Why vast.ai could not be used."""

    UNREACHABLE = "unreachable"  # no answer in time, no connection, or failing (5xx) throughout
    BAD_ANSWER = "bad_answer"  # an answer we cannot read (not JSON, or a field missing)
    AUTH = "auth"  # VAST_API_KEY rejected: retrying will not help
    REFUSED = "refused"  # any other 4xx, or a PUT answered without success
    RATE_LIMITED = "rate_limited"  # 429 after the retries, or a wait too long to make
    NOT_FOUND = "not_found"  # vast.ai does not know the instance
    OFFER_GONE = "offer_gone"  # the offer was taken or withdrawn between search and create

    @property
    def outcome(self) -> str:
        """The outcome label of vastpanel_vast_calls_total: both ways of failing are "upstream"."""
        if self in (VastErrorKind.UNREACHABLE, VastErrorKind.BAD_ANSWER):
            return "upstream"
        if self is VastErrorKind.OFFER_GONE:
            return VastErrorKind.REFUSED.value
        return self.value


class VastError(Exception):
    """vast.ai could not be used; the message is safe to show (it never holds a key)."""

    def __init__(
        self,
        message: str,
        *,
        kind: VastErrorKind,
        status: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status


class PanelError(Exception):
    """An action could not be done; the message is safe to show."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotConfigured(PanelError):
    """VAST_API_KEY or VAST_INSTANCE_ID is missing."""


class UpstreamFailed(PanelError):
    """vast.ai failed, refused, or does not know the instance; kind says which."""

    def __init__(self, message: str, kind: VastErrorKind):
        super().__init__(message)
        self.kind = kind


class HealthTimeout(PanelError):
    """The instance did not answer its health URL in time."""


class PowerBusy(PanelError):
    """Another power action holds the lock for too long."""


class LlmUnavailable(PanelError):
    """The LLM cannot take a request now; retry_after says when to try again (seconds)."""

    def __init__(self, message: str, retry_after: int, code: str):
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class ClientGone(Exception):
    """The client of a waiting request went away; nobody is left to answer."""


class InvalidRequest(PanelError):
    """A value given to an action is out of bounds; nothing was changed."""


class NotRunning(PanelError):
    """The action needs an open session (a running instance) and there is none."""
