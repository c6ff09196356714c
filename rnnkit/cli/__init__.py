"""Command-line interface (``rnnkit``); the library never imports it."""
