"""CLI commands, one module each (see mai_core.cli)."""
