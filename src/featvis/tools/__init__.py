"""Command-line tools, each run as `python -m featvis.tools.<name>`: summary (a sweep as a table),
integrity (a run dir reads back whole), deepsim (code statistics for published weights), shapes
(a sample grid of the built-in data)."""
