"""Report writing: Markdown tables and PNG figures."""
