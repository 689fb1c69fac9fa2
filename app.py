"""Entry point: `flask --app app run` serves the panel configured from the environment."""

from vastpanel import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:
    raise SystemExit(f"vastpanel: configuration error: {exc}") from None
