"""The read-only catalog UI: Jinja pages with JSON twins, served by the gateway process."""

from ui.routes import ui_routes

__all__ = ["ui_routes"]
