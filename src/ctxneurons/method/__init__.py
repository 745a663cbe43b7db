"""The paper's method (METHOD.md), one module per section."""
