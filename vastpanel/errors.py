"""The errors a domain action raises; each message is safe to show to the caller."""

from __future__ import annotations


class PanelError(Exception):
    """An action could not be done; the message is safe to show."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotConfigured(PanelError):
    """VAST_API_KEY or VAST_INSTANCE_ID is missing."""


class UpstreamFailed(PanelError):
    """vast.ai failed, refused, or does not know the instance."""


class HealthTimeout(PanelError):
    """The instance did not answer its health URL in time."""


class PowerBusy(PanelError):
    """Another power action holds the lock for too long."""


class InvalidRequest(PanelError):
    """A value given to an action is out of bounds; nothing was changed."""


class NotRunning(PanelError):
    """The action needs an open session (a running instance) and there is none."""
