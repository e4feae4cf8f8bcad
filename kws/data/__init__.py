"""kws.data: see README.md, Layout."""
