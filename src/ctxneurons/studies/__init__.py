"""Studies beyond the paper, built on the method's own parts."""
