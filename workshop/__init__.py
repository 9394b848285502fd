"""The project's workshop: synthetic datasets, small-run recipes, the demo,
the model benchmark and the pictures.  Used by tools/ and tests/ from a
checkout; not part of the installed mmdoconv plugin."""
