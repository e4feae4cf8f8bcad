"""kws.train: see README.md, Layout."""
