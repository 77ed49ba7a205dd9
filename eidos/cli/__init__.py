"""Command-line entry points (`eidos ...`)."""
