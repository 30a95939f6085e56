"""Thin Typer commands, one module per pipeline stage, joined in stages.cli."""
