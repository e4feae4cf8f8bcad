"""kws.model: see README.md, Layout."""
