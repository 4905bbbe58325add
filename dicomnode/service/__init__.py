"""The node process (serve) and its status report."""
