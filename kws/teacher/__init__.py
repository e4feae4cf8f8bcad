"""kws.teacher: see README.md, Layout."""
