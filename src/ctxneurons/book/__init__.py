"""The book's edge: parameters, runs, outputs, figures, reports, the live page, the CLI."""
