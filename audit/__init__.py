"""llm-spend-audit: audit LLM API spend from request logs.

The core (everything but ``audit.cli`` and ``audit.console``) imports without
typer or rich, so it can be used as a library and tested without the UI.
"""

__version__ = "0.1.0"
